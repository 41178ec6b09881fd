"""Helpers shared by the engine tests: a tiny 3-task toy config."""

from __future__ import annotations

from pathlib import Path

from rankwise.config import config_from_dict

REPO = Path(__file__).resolve().parents[2]


def toy_dict(method: str = "codyra", **train) -> dict:
    method_section = {"name": method}
    if method in ("lora", "codyra", "moram"):
        method_section["r"] = 8
    if method == "codyra":
        method_section.update(k_max=0.05, ramp_steps=5)
    return {
        "name": f"toy_{method}",
        "seed": 3,
        "device": "cpu",
        "method": method_section,
        "backbone": {"name": "toy"},
        "scenario": {"name": "synthetic", "num_tasks": 3, "train_per_class": 16, "test_per_class": 8},
        "train": {
            "iterations": 20,
            "batch_size": 16,
            "lr": 2e-2,
            "log_every": 3,
            "checkpoint_every": 5,
            **train,
        },
    }


def toy_config(method: str = "codyra", **train):
    return config_from_dict(toy_dict(method, **train))
