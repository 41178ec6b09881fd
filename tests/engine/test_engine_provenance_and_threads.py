"""tasks.json provenance, the threads setting, and evaluation/gradient helpers on one process."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from toy_helpers import toy_config, toy_dict

from rankwise.config import config_from_dict
from rankwise.engine import distributed as ddp
from rankwise.engine.continual import run_experiment
from rankwise.engine.device import apply_threads
from rankwise.errors import ConfigError
from rankwise.registry import SCENARIOS


def test_tasks_json_records_each_tasks_provenance(tmp_path):
    config = toy_config("zero-shot")
    result = run_experiment(config, tmp_path / "run", quiet=True)
    record = json.loads((result.run_dir / "tasks.json").read_text())
    # the same tasks, built independently from the scenario
    cfg = config_from_dict(toy_dict("zero-shot"))
    tasks = SCENARIOS["synthetic"].load_factory()(cfg.scenario.config, cfg.seed)
    assert [t["name"] for t in record["tasks"]] == [t.name for t in tasks] == ["syn0", "syn1", "syn2"]
    for i, (row, task) in enumerate(zip(record["tasks"], tasks)):
        assert row["index"] == i + 1 and row["metric"] == task.metric == "accuracy"
        assert row["num_train"] == len(task.train) == 4 * 16  # 4 classes x train_per_class
        assert row["num_test"] == len(task.test) == 4 * 8
        assert row["num_classes"] == len(task.class_names) == 4
        assert row["num_eval_classes"] is None and row["label_offset"] == 0
        assert row["info"] == json.loads(json.dumps(task.info))
        assert row["info"]["generator"] == "synthetic" and row["info"]["seed"] == cfg.seed


def test_threads_are_applied_and_do_not_block_a_resume(tmp_path):
    previous = torch.get_num_threads()
    try:
        data = toy_dict("zero-shot")
        result = run_experiment(config_from_dict(data | {"threads": 2}), tmp_path / "run", quiet=True)
        assert torch.get_num_threads() == 2
        saved = (result.run_dir / "config.yaml").read_text()
        assert "threads: 2" in saved
        # resuming with another thread count is the same computation: not refused
        again = run_experiment(
            config_from_dict(data | {"threads": 1}), result.run_dir, resume=True, quiet=True
        )
        assert torch.get_num_threads() == 1
        assert again.accuracy_matrix.tolist() == result.accuracy_matrix.tolist()
    finally:
        torch.set_num_threads(previous)
    apply_threads(None)
    assert torch.get_num_threads() == previous
    with pytest.raises(ConfigError, match="threads"):
        apply_threads(0)


def test_single_process_helpers_are_no_ops():
    model = torch.nn.Linear(3, 1)
    step = ddp.TaskDDP(model, lambda x: model(x).sum(), list(model.parameters()), ddp.SINGLE, torch.device("cpu"))
    x = torch.ones(2, 3)
    assert step(x).item() == model(x).sum().item()
    assert isinstance(step.sync(last=False), contextlib.nullcontext)
    mean = ddp.mean_over_ranks(torch.tensor([1.5, float("nan")], dtype=torch.float32), ddp.SINGLE)
    assert mean.dtype == torch.float64 and mean[0].item() == 1.5 and mean[1].isnan()
    assert ddp.gather_objects({"a": 1}, ddp.SINGLE) == [{"a": 1}]
    assert ddp.broadcast_object("x", ddp.SINGLE) == "x"
    ddp.check_in_sync(torch.nn.Linear(2, 2), ddp.SINGLE, "anywhere")
