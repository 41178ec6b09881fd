"""CLIP end to end through the engine: tiny random CLIPs trained with CoDyRA and MoRAM on fixture
datasets in the official layouts (MTIL, X-TAIL), and a 3-task run on real images from shared/data."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

import rankwise
from rankwise.config import config_from_dict
from rankwise.engine.continual import run_experiment

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "data" / "images"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mtil_fixtures = _load("mtil_fixtures", REPO / "tests" / "scenarios" / "test_mtil.py")
clip_fixtures = _load("clip_fixtures", REPO / "tests" / "backbones" / "test_clip.py")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mtil_data")
    mtil_fixtures.make_dtd_torchvision(root)
    mtil_fixtures.make_dtd_coop(root)
    mtil_fixtures.make_eurosat_torchvision(root, n=10)
    mtil_fixtures.make_aircraft(root, "fgvc-aircraft-2013b/data")
    mtil_fixtures.make_aircraft(root, "fgvc_aircraft")
    return root


def _method(name: str) -> dict:
    if name == "codyra":
        return {"name": "codyra", "r": 4, "k_max": 0.05, "ramp_steps": 2}
    return {"name": "moram", "r": 4}


def _run(tmp_path: Path, method: str, backbone: dict, scenario: dict):
    config = config_from_dict(
        {
            "name": f"clip_{method}",
            "seed": 0,
            "device": "cpu",
            "method": _method(method),
            "backbone": backbone,
            "scenario": scenario,
            "train": {"iterations": 4, "batch_size": 6, "lr": 1e-3, "log_every": 1, "checkpoint_every": 10},
            "eval": {"batch_size": 16},
        }
    )
    return run_experiment(config, tmp_path / "run", quiet=True)


def _check_run(result, n_tasks: int, method: str) -> None:
    matrix = result.accuracy_matrix
    assert matrix.shape == (n_tasks + 1, n_tasks)
    assert np.all((matrix >= 0) & (matrix <= 100))
    losses = [
        json.loads(line)["loss"]
        for line in (result.run_dir / "events.jsonl").read_text().splitlines()
        if '"step"' in line
    ]
    assert len(losses) == 4 * n_tasks and all(math.isfinite(v) for v in losses)
    saved = json.loads(
        (
            result.run_dir / "checkpoints" / f"task_{n_tasks}_{result.task_names[-1]}" / "adapter_config.json"
        ).read_text()
    )
    assert method in json.dumps(saved).lower()


@pytest.mark.parametrize("method", ["codyra", "moram"])
def test_open_clip_mtil_fixture(tmp_path: Path, data_root: Path, method: str) -> None:
    backbone = {"name": "open-clip", "model_config": clip_fixtures.TINY_OPEN_CLIP, "eval_templates": "first"}
    scenario = {
        "name": "mtil",
        "root": str(data_root),
        "datasets": ["dtd", "eurosat"],
        "shots": 3,
        "split_convention": "torchvision",  # the fixture's EuroSAT has no split_zhou file
    }
    result = _run(tmp_path, method, backbone, scenario)
    assert result.task_names == ["dtd", "eurosat"]
    _check_run(result, 2, method)


@pytest.mark.parametrize("method", ["codyra", "moram"])
def test_hf_clip_xtail_coop_fixture(tmp_path: Path, data_root: Path, hf_folder: Path, method: str) -> None:
    backbone = {"name": "hf-clip", "path": str(hf_folder)}
    scenario = {
        "name": "xtail",
        "root": str(data_root),
        "datasets": ["aircraft", "dtd"],
        "shots": 2,
        "split_convention": "coop",
    }
    result = _run(tmp_path, method, backbone, scenario)
    assert result.task_names == ["aircraft", "dtd"]
    _check_run(result, 2, method)


hf_folder = clip_fixtures.hf_folder


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="shared/data/images not present")
def test_real_images_three_tasks_from_preset(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "configs" / "images_tiny_clip_codyra.yaml").read_text())
    data["scenario"].update(root=str(SHARED_IMAGES), max_train_per_task=48, max_test_per_task=40)
    data["train"].update(iterations=6, checkpoint_every=3)
    data["method"].update(ramp_steps=3)
    result = run_experiment(config_from_dict(data), tmp_path / "run", quiet=True)
    assert result.task_names == ["gtsrb", "dtd10", "cifar10"]
    assert result.accuracy_matrix.shape == (4, 3)
    assert set(result.metrics) >= {"transfer", "average", "last"}
    # the CoDyRA factors were merged after each task: reload the last checkpoint into a fresh CLIP
    from rankwise.backbones.clip import OpenClipConfig, build_open_clip

    fresh = build_open_clip(OpenClipConfig(model_config=data["backbone"]["model_config"]), "cpu")
    model = rankwise.load_model(fresh.model, result.run_dir / "checkpoints" / "task_3_cifar10")
    report = model.rank_report()
    assert report and len(report) == 24  # 2 layers x 6 linears x 2 towers
