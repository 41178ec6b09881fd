"""Bad input: each case gets a clear error, and files already on disk stay exactly as they were."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from toy_helpers import toy_config, toy_dict

from rankwise.backbones import toy as toy_backbone
from rankwise.config import config_from_dict
from rankwise.engine import checkpoint as ckpt
from rankwise.engine.continual import evaluate_run, run_experiment
from rankwise.engine.trainer import NonFiniteLossError
from rankwise.errors import CheckpointError, ConfigError, DataError, TargetModulesError
from rankwise.scenarios import synthetic
from rankwise.tasks import ClassificationExample


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return run_experiment(toy_config(), tmp_path_factory.mktemp("fin") / "run", quiet=True)


@pytest.fixture
def existing(tmp_path, finished):
    """A copy of a finished run that bad runs try (and must fail) to overwrite."""
    import shutil

    target = tmp_path / "existing"
    shutil.copytree(finished.run_dir, target)
    return target, tree_digest(target)


def _refused(existing, data, error, match):
    target, before = existing
    with pytest.raises(error, match=match):
        run_experiment(config_from_dict(data), target, overwrite=True, quiet=True)
    assert tree_digest(target) == before
    assert not list(target.parent.glob("existing.replaced-*"))  # nothing moved aside either


def test_target_modules_matching_nothing(existing):
    data = toy_dict()
    data["method"]["target_modules"] = ["no_such_layer"]
    _refused(existing, data, TargetModulesError, "no_such_layer")


def test_data_folder_missing(existing, tmp_path):
    data = toy_dict("lora")
    data["scenario"] = {"name": "image-folder", "root": str(tmp_path / "absent")}
    with pytest.raises(ConfigError, match="scenario.root"):
        config_from_dict(data)


def test_data_folder_lacking_a_split(existing, tmp_path):
    task = tmp_path / "data" / "text" / "cl_benchmark" / "agnews"
    task.mkdir(parents=True)
    (task / "labels.json").write_text(json.dumps(["World", "Sports"]))
    (task / "train.json").write_text(json.dumps([{"label": "World", "sentence": "a b"}]))
    data = toy_dict("lora")
    data["scenario"] = {"name": "text-mtil", "root": str(tmp_path / "data"), "tasks": ["agnews"]}
    _refused(existing, data, DataError, "test.json")


def test_label_not_in_label_list(existing, tmp_path):
    task = tmp_path / "data" / "text" / "cl_benchmark" / "agnews"
    task.mkdir(parents=True)
    (task / "labels.json").write_text(json.dumps(["World", "Sports"]))
    for split in ("train", "test"):
        rows = [{"label": "World", "sentence": "x y"}, {"label": "Cooking", "sentence": "z"}]
        (task / f"{split}.json").write_text(json.dumps(rows))
    data = toy_dict("lora")
    data["scenario"] = {"name": "text-mtil", "root": str(tmp_path / "data"), "tasks": ["agnews"]}
    _refused(existing, data, DataError, "Cooking")


def test_engine_rejects_empty_tasks_and_out_of_range_labels(existing, monkeypatch):
    real = synthetic.build_scenario

    def empty_second_task(config, seed):
        tasks = real(config, seed)
        tasks[1].train = []
        return tasks

    monkeypatch.setattr(synthetic, "build_scenario", empty_second_task)
    _refused(existing, toy_dict(), DataError, "task 'syn1' has an empty train split")

    def bad_label(config, seed):
        tasks = real(config, seed)
        tasks[2].test = [*tasks[2].test, ClassificationExample(input=(1, 2, 3), label=7)]
        return tasks

    monkeypatch.setattr(synthetic, "build_scenario", bad_label)
    _refused(
        existing, toy_dict(), DataError, "task 'syn2' test example .* label id 7, outside its label list of 4"
    )


def test_nan_loss_stops_keeps_last_good_state_and_resume_recovers(tmp_path, monkeypatch, finished):
    real_loss = toy_backbone.ToyBackbone.loss
    calls = [0]

    def loss(self, batch, task):
        calls[0] += 1
        value = real_loss(self, batch, task)
        return value * float("nan") if calls[0] == 20 + 13 else value  # task 2, iteration 13

    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(toy_backbone.ToyBackbone, "loss", loss)
        with pytest.raises(NonFiniteLossError, match=r"task 2 \('syn1'\), iteration 13.*iteration 10"):
            run_experiment(toy_config(), run_dir, quiet=True)
    state = ckpt.read_state(run_dir / "state")
    assert (state["task_index"], state["iteration"]) == (1, 10)
    ckpt.verify_dir(run_dir / "checkpoints" / "task_1_syn0")
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert all(np.isfinite(e["loss"]) for e in events if e["event"] == "step")
    result = run_experiment(toy_config(), run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, finished.accuracy_matrix)


def test_corrupted_or_truncated_checkpoints_are_detected_not_loaded(existing):
    target, _ = existing
    weights = target / "checkpoints" / "task_3_syn2" / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF  # one flipped bit in tensor data: safetensors alone would not notice
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        evaluate_run(target)
    snapshot = target / "state" / ckpt.read_state(target / "state")["snapshot"] / "tensors.safetensors"
    snapshot.write_bytes(snapshot.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="tensors.safetensors"):
        ckpt.load_snapshot(snapshot.parent)
    (target / "state" / "state.json").write_text('{"version": 1, "task_in')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        run_experiment(toy_config(), target, resume=True, quiet=True)


def test_resume_with_a_different_config_refuses_and_shows_the_diff(existing):
    target, before = existing
    with pytest.raises(ConfigError) as info:
        run_experiment(toy_config(lr=0.5), target, resume=True, quiet=True)
    assert "-  lr: 0.02" in str(info.value) and "+  lr: 0.5" in str(info.value)
    assert tree_digest(target) == before


def test_refuses_finished_unfinished_and_foreign_directories(existing, tmp_path):
    target, before = existing
    with pytest.raises(ConfigError, match="finished run; pass --overwrite"):
        run_experiment(toy_config(), target, quiet=True)
    assert tree_digest(target) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a rankwise run"):
        run_experiment(toy_config(), foreign, quiet=True)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_experiment(toy_config(), tmp_path / "never", resume=True, quiet=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_overwrite_moves_the_old_run_aside(existing):
    target, before = existing
    result = run_experiment(toy_config(), target, overwrite=True, quiet=True)
    (moved,) = target.parent.glob("existing.replaced-*")
    assert tree_digest(moved) == before
    assert result.run_dir == target and (target / "metrics.json").is_file()
