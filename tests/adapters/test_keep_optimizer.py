"""``keep_optimizer`` (official TRACE: one optimizer for the whole run) in the trainer and the engine.

Reference: the official runner (TRACE/training/main.py) builds one Adam over the persistent ``loranew_*``
parameters and, at each task end, re-initialises them in place (``increment_task``), so the moments and
the step count run on. rankwise gives each task new parameter objects and a new optimizer and carries
the state over (`carry_optimizer_state`); both must follow the same trajectory.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rankwise.config import TrainConfig, config_from_dict
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import continual
from rankwise.engine.continual import run_experiment
from rankwise.engine.trainer import carry_optimizer_state, make_optimizer
from rankwise.errors import RankwiseError


def _init(generator, shape):
    return torch.randn(shape, generator=generator)


def _grad_step(params, x):
    loss = sum(((x @ p.t()) ** 2).mean() for p in params)
    loss.backward()


def test_carried_state_follows_one_optimizer_kept_across_tasks():
    shapes = [(3, 5), (4, 5)]
    tasks, steps = 3, 4
    cfg = TrainConfig(lr=1e-2, optimizer="adam", betas=[0.9, 0.95], weight_decay=0.0)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(9))

    # official: persistent parameters, one optimizer, re-initialised in place between tasks
    g = torch.Generator().manual_seed(1)
    persistent = [torch.nn.Parameter(_init(g, s)) for s in shapes]
    one = torch.optim.Adam(persistent, lr=1e-2, betas=(0.9, 0.95))
    official = []
    for t in range(tasks):
        if t:
            with torch.no_grad():
                for p, s in zip(persistent, shapes):
                    p.copy_(_init(g, s))
        for _ in range(steps):
            one.zero_grad()
            _grad_step(persistent, x)
            one.step()
        official.append([p.detach().clone() for p in persistent])

    # rankwise: new parameter objects and a new optimizer per task, the state carried over
    g = torch.Generator().manual_seed(1)
    kept, ours = None, []
    for _ in range(tasks):
        params = [torch.nn.Parameter(_init(g, s)) for s in shapes]
        optimizer = make_optimizer(params, cfg)
        if kept is not None:
            carry_optimizer_state(optimizer, kept)
        for _ in range(steps):
            optimizer.zero_grad()
            _grad_step(params, x)
            optimizer.step()
        kept = optimizer.state_dict()
        ours.append([p.detach().clone() for p in params])
    for a, b in zip(official, ours):
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert float(optimizer.state[params[0]]["step"]) == tasks * steps

    # without carrying, the trajectory differs from the official one after the first task
    fresh = [torch.nn.Parameter(t.clone()) for t in official[0]]
    assert not torch.equal(fresh[0], ours[1][0])


def test_carry_refuses_a_different_parameter_layout():
    cfg = TrainConfig(lr=1e-2)
    a = make_optimizer([torch.nn.Parameter(torch.ones(2, 3))], cfg)
    a.zero_grad()
    a.param_groups[0]["params"][0].sum().backward()
    a.step()
    b = make_optimizer([torch.nn.Parameter(torch.ones(3, 3))], cfg)
    with pytest.raises(RankwiseError, match="shape"):
        carry_optimizer_state(b, a.state_dict())
    c = make_optimizer([torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(1))], cfg)
    with pytest.raises(RankwiseError, match="do not match"):
        carry_optimizer_state(c, a.state_dict())


def _config(**method):
    return config_from_dict(
        {
            "name": "keep",
            "seed": 4,
            "device": "cpu",
            "method": {"name": "moram", "r": 4, "lora_alpha": 8, **method},
            "backbone": {"name": "toy"},
            "scenario": {"name": "synthetic", "num_tasks": 2, "train_per_class": 8, "test_per_class": 4},
            "train": {"iterations": 10, "batch_size": 8, "lr": 1e-2, "log_every": 1, "checkpoint_every": 5},
        }
    )


def _steps_at_task_start(monkeypatch):
    seen = []
    original = continual.train_task

    def wrapper(**kwargs):
        state = kwargs["optimizer"].state
        seen.append(sorted({float(s["step"]) for s in state.values()}))
        return original(**kwargs)

    monkeypatch.setattr(continual, "train_task", wrapper)
    return seen


@pytest.mark.parametrize("keep", [True, False])
def test_engine_keeps_the_optimizer_state_across_tasks(tmp_path, monkeypatch, keep):
    seen = _steps_at_task_start(monkeypatch)
    run_experiment(_config(keep_optimizer=keep), tmp_path / "run", quiet=True)
    assert seen == ([[], [10.0]] if keep else [[], []])


class Crash(BaseException):
    """Stands in for a kill."""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run_experiment(
        _config(compat="official_trace"), tmp_path_factory.mktemp("ref") / "run", quiet=True
    )


def _steps(run_dir):
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [(e["task"], e["iteration"], e["loss"]) for e in map(json.loads, lines) if e["event"] == "step"]


# commits: 1 zero-shot, 2 task 1 @5, 3 task 1 end, 4 task 2 @5, 5 task 2 end. A crash inside write_state n
# resumes from commit n - 1: mid task 1, at the task boundary (kept optimizer from the snapshot), mid task 2.
@pytest.mark.parametrize("n", [3, 4, 5])
def test_resume_with_official_trace_switches_is_exact(tmp_path, monkeypatch, uninterrupted, n):
    run_dir = tmp_path / "run"
    calls = [0]
    original = ckpt.write_state

    def crashing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise Crash(n)
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_state", crashing)
        with pytest.raises(Crash):
            run_experiment(_config(compat="official_trace"), run_dir, quiet=True)
    result = run_experiment(_config(compat="official_trace"), run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, uninterrupted.accuracy_matrix)
    assert _steps(run_dir) == _steps(uninterrupted.run_dir)
    assert all(math.isfinite(loss) for _, _, loss in _steps(run_dir))


# -- `rankwise eval RUN --set method.delta=...`: inference options on a saved run -------------------------
def test_eval_with_inference_options_equals_a_run_trained_with_them(tmp_path, capsys):
    """delta only acts at inference, so evaluating a delta = 0 run with delta = 0.6 must give the last row
    of an identical run configured with delta = 0.6 from the start (and differ from its own last row)."""
    from rankwise import cli
    from rankwise.engine.continual import evaluate_run
    from rankwise.errors import ConfigError

    trained = run_experiment(_config(delta=0.0), tmp_path / "a", quiet=True)
    reference = run_experiment(_config(delta=0.6), tmp_path / "b", quiet=True)
    swept = evaluate_run(trained.run_dir, inference_options={"delta": 0.6})
    assert list(swept.values()) == list(reference.accuracy_matrix[-1])
    assert list(swept.values()) != list(trained.accuracy_matrix[-1])  # the option took effect
    assert list(evaluate_run(trained.run_dir).values()) == list(trained.accuracy_matrix[-1])
    assert cli.main(["eval", str(trained.run_dir), "--set", "method.delta=0.6", "--quiet"]) == 0
    printed = [float(line.split()[-1]) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert printed == pytest.approx(list(reference.accuracy_matrix[-1]), abs=0.005)
    assert cli.inference_options(["method.tau=5e-3", "method.top_k=3"]) == {"tau": 0.005, "top_k": 3}
    with pytest.raises(ConfigError, match="method.top_k, method.tau or method.delta"):
        cli.inference_options(["train.lr=1e-3"])
    with pytest.raises(ConfigError, match="delta"):
        evaluate_run(trained.run_dir, inference_options={"delta": 3.0})
