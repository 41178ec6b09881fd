"""MoE-LoRA through the engine: a toy 3-task run completes and kill-and-resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from toy_helpers import toy_config

from rankwise.engine import checkpoint as ckpt
from rankwise.engine.continual import run_experiment


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing catches it."""


def _steps(run_dir) -> list[tuple]:
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return [(e["task"], e["iteration"], e["loss"]) for e in events if e["event"] == "step"]


def test_moelora_toy_run_and_exact_resume(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = toy_config("moe-lora", iterations=10)
    reference = run_experiment(cfg, tmp_path / "ref", quiet=True)
    matrix = np.asarray(reference.accuracy_matrix)
    assert matrix.shape[1] == 3 and np.isfinite(matrix).all()

    original, calls = ckpt.write_state, [0]

    def crash_on_third(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:  # the 2nd task's mid-task snapshot (iteration 5, two experts) is the last commit
            raise Crash("write_state call 3")
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_state", crash_on_third)
        with pytest.raises(Crash):
            run_experiment(toy_config("moe-lora", iterations=10), tmp_path / "run", quiet=True)
    result = run_experiment(toy_config("moe-lora", iterations=10), tmp_path / "run", resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, reference.accuracy_matrix)
    assert result.metrics == reference.metrics
    assert _steps(tmp_path / "run") == _steps(tmp_path / "ref")
