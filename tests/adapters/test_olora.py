"""O-LoRA (adapters/olora.py): the regulariser by hand, the forward as a dense sum over tasks,
frozen earlier factors, save/load, the engine adding the term, resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from rankwise.adapters import get_model, load_model, method_names
from rankwise.adapters.olora import OLoRAConfig, OLoRALinear
from rankwise.errors import ConfigError

D_IN, D_OUT, R = 6, 5, 3


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, D_OUT), nn.Tanh(), nn.Linear(D_OUT, 4))


def _cfg(**kw) -> OLoRAConfig:
    return OLoRAConfig(**{"r": R, "lora_alpha": 6.0, "lora_dropout": 0.0, "target_modules": ["0", "2"], **kw})


def _train_tasks(wrapped, n_tasks: int, *, leave_last_open: bool = False) -> list[dict[str, tuple]]:
    """Run n_tasks tasks; every layer's factors get random values (B is 0 at init). Returns, per task,
    each layer's (A, B) as trained."""
    history = []
    for t in range(n_tasks):
        wrapped.begin_task(f"t{t}")
        factors = {}
        with torch.no_grad():
            for name, layer in wrapped.adapter_layers().items():
                layer.lora_A.normal_()
                layer.lora_B.normal_()
                factors[name] = (layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
        history.append(factors)
        if not (leave_last_open and t == n_tasks - 1):
            wrapped.end_task()
    return history


def test_registered_with_official_defaults():
    assert "olora" in method_names()
    cfg = OLoRAConfig()
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout, cfg.lambda_1, cfg.lambda_2) == (8, 32.0, 0.1, 0.5, 0.0)
    assert (cfg.orthogonality_norm, cfg.l2_norm) == ("l1", "frobenius")
    for bad in ({"lambda_1": -1.0}, {"lambda_2": float("nan")}, {"lambda_1": True},
                {"orthogonality_norm": "l2"}, {"l2_norm": "fro"}):  # fmt: skip
        with pytest.raises(ConfigError, match=next(iter(bad))):
            OLoRAConfig(**bad)


@pytest.mark.parametrize("norm", ["l1", "squared"])
def test_orthogonality_loss_against_a_loop_over_earlier_tasks(norm):
    wrapped = get_model(_net(), _cfg(lambda_1=0.7, orthogonality_norm=norm))
    assert wrapped.extra_loss() is None  # no live adapter
    history = _train_tasks(wrapped, 3, leave_last_open=True)
    expected = 0.0
    for name in wrapped.adapter_layers():
        A_t = history[-1][name][0].double()
        for earlier in history[:-1]:
            A_i = earlier[name][0].double()
            for j in range(R):  # entry by entry: (A_t A_i^T)_{jk} = <A_t[j], A_i[k]>
                for k in range(R):
                    dot = sum(float(A_t[j, c]) * float(A_i[k, c]) for c in range(A_t.shape[1]))
                    expected += 0.7 * (abs(dot) if norm == "l1" else dot * dot)
    got = wrapped.extra_loss()
    assert got.requires_grad
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_first_task_has_no_orthogonality_term_and_zero_weights_add_nothing():
    wrapped = get_model(_net(), _cfg(lambda_1=0.5))
    wrapped.begin_task("t0")
    assert float(wrapped.extra_loss().detach()) == 0.0  # nothing earlier to be orthogonal to
    wrapped.end_task()
    fresh = get_model(_net(), _cfg(lambda_2=0.5))
    fresh.begin_task("t0")  # B = 0 at init: the unsquared norm must still give finite (zero) gradients
    fresh.extra_loss().backward()
    assert all(torch.isfinite(p.grad).all() for p in fresh.trainable_parameters())
    off = get_model(_net(), _cfg(lambda_1=0.0, lambda_2=0.0))
    _train_tasks(off, 2, leave_last_open=True)
    assert off.extra_loss() is None  # as for plain LoRA: the engine adds nothing at all


@pytest.mark.parametrize("norm", ["frobenius", "squared"])
def test_lambda_2_term_by_hand(norm):
    wrapped = get_model(_net(), _cfg(lambda_1=0.0, lambda_2=0.3, l2_norm=norm))
    history = _train_tasks(wrapped, 2, leave_last_open=True)
    expected = 0.0
    for A, B in history[-1].values():
        sq_a = sum(float(v) ** 2 for v in A.flatten())
        sq_b = sum(float(v) ** 2 for v in B.flatten())
        expected += 0.3 * (sq_a**0.5 + sq_b**0.5 if norm == "frobenius" else sq_a + sq_b)
    assert float(wrapped.extra_loss().detach()) == pytest.approx(expected, rel=1e-5)


def test_earlier_factors_frozen_and_in_the_forward():
    base = _net()
    reference = copy.deepcopy(base)
    wrapped = get_model(base, _cfg(lambda_1=0.5, lambda_2=0.1))
    history = _train_tasks(wrapped, 3, leave_last_open=True)
    scaling = 6.0 / R
    x = torch.randn(7, D_IN)

    def dense(layer: nn.Linear, name: str, h: torch.Tensor) -> torch.Tensor:
        W = layer.weight.double() + sum(scaling * B.double() @ A.double() for A, B in (t[name] for t in history))
        return h.double() @ W.t() + layer.bias.double()

    h = torch.tanh(dense(reference[0], "0", x))
    expected = dense(reference[2], "2", h)
    torch.testing.assert_close(wrapped(x).double(), expected, rtol=1e-5, atol=1e-5)

    trainable = {id(p) for p in wrapped.trainable_parameters()}
    layers = list(wrapped.adapter_layers().values())
    assert trainable == {id(p) for layer in layers for p in (layer.lora_A, layer.lora_B)}  # DDP averages these
    for layer in layers:
        assert layer.merged_tasks == 2
        assert all(not A.requires_grad and not B.requires_grad for A, B in layer.merged_history())
    wrapped.extra_loss().backward()
    assert all(layer.base_layer.weight.grad is None for layer in layers)
    assert all(layer.lora_A.grad is not None and layer.lora_B.grad is not None for layer in layers)


def test_save_load_bit_identical_mid_stream(tmp_path):
    wrapped = get_model(_net(), _cfg(lambda_1=0.5, lambda_2=0.2))
    _train_tasks(wrapped, 2, leave_last_open=True)  # task 2 still open
    wrapped.save_pretrained(tmp_path / "a")
    again = load_model(_net(), tmp_path / "a")
    assert isinstance(again.config, OLoRAConfig) and again.config.lambda_2 == 0.2
    x = torch.randn(5, D_IN)
    assert torch.equal(wrapped(x), again(x))
    assert torch.equal(wrapped.extra_loss(), again.extra_loss())
    for a, b in zip(wrapped.adapter_layers().values(), again.adapter_layers().values()):
        assert isinstance(b, OLoRALinear) and torch.equal(a.base_layer.weight, b.base_layer.weight)
        assert b.lora_A.requires_grad
    wrapped.end_task()
    again.end_task()
    y = wrapped(x)
    assert torch.equal(y, again(x))
    assert wrapped.mergeable  # every task already folded into W: unloading changes nothing
    assert torch.equal(wrapped.merge_and_unload()(x), y)


def test_trainer_loss_is_task_loss_plus_extra():
    from rankwise.config import TrainConfig
    from rankwise.engine.trainer import make_optimizer, make_scheduler, train_task
    from rankwise.tasks import Task

    wrapped = get_model(_net(), _cfg(lambda_1=0.5, lambda_2=0.2))
    _train_tasks(wrapped, 2, leave_last_open=True)
    data = [(torch.randn(D_IN), int(i % 4)) for i in range(8)]

    class Backbone:
        def collate(self, items, task, train):
            return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

        def loss(self, batch, task):
            return nn.functional.cross_entropy(wrapped(batch[0]), batch[1])

    cfg = TrainConfig(iterations=1, batch_size=8, lr=1e-3)
    task = Task(name="toy", train=data, test=data, class_names=["a", "b", "c", "d"], templates=["{}"])
    backbone = Backbone()
    with torch.no_grad():
        batch = backbone.collate(data, task, True)
        task_loss = float(backbone.loss(batch, task))  # every example once: order does not matter
        extra = float(wrapped.extra_loss().detach())
    logs = []
    optimizer = make_optimizer(wrapped.trainable_parameters(), cfg)
    train_task(backbone=backbone, model=wrapped, task=task, task_index=0, cfg=cfg, seed=0, optimizer=optimizer,
               scheduler=make_scheduler(optimizer, cfg), start_iteration=0, after_step=None,
               on_step=logs.append, device=torch.device("cpu"))  # fmt: skip
    assert extra > 0 and logs[0].extra["extra_loss"] == pytest.approx(extra, rel=1e-6)
    assert logs[0].loss == pytest.approx(task_loss + extra, rel=1e-6)


def _toy(method_args: dict, **train):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from toy_helpers import toy_dict

    from rankwise.config import config_from_dict

    d = toy_dict("olora", **train)
    d["method"].update({"r": 4, "lora_dropout": 0.0, **method_args})
    return config_from_dict(d)


def _steps(run_dir) -> list[tuple]:
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return [(e["task"], e["iteration"], e["loss"]) for e in events if e["event"] == "step"]


def test_engine_adds_the_term_and_resumes_exactly(tmp_path, monkeypatch):
    from rankwise.engine import checkpoint as ckpt
    from rankwise.engine.continual import run_experiment

    torch.set_num_threads(1)
    short = {"iterations": 10, "checkpoint_every": 5}
    on = run_experiment(_toy({"lambda_1": 0.5}, **short), tmp_path / "on", quiet=True)
    off = run_experiment(_toy({"lambda_1": 0.0}, **short), tmp_path / "off", quiet=True)
    # with both weights 0, O-LoRA is exactly LoRA merged after each task (same init, same forward)
    lora = _toy({"lambda_1": 0.0}, **short).to_dict()
    lora["method"] = {"name": "lora", "r": 4, "lora_alpha": 32.0, "lora_dropout": 0.0, "merge_on_task_end": True}
    from rankwise.config import config_from_dict

    plain = run_experiment(config_from_dict(lora), tmp_path / "lora", quiet=True)
    np.testing.assert_array_equal(plain.accuracy_matrix, off.accuracy_matrix)
    assert _steps(tmp_path / "lora") == _steps(tmp_path / "off")
    steps_on, steps_off = _steps(tmp_path / "on"), _steps(tmp_path / "off")
    # task 1 has nothing earlier to be orthogonal to: identical; later tasks differ
    assert [s for s in steps_on if s[0] == 1] == [s for s in steps_off if s[0] == 1]
    assert [s for s in steps_on if s[0] > 1] != [s for s in steps_off if s[0] > 1]
    events = [json.loads(x) for x in (tmp_path / "on" / "events.jsonl").read_text().splitlines()]
    later = [e for e in events if e["event"] == "step" and e["task"] > 1]
    assert later and all(e["extra_loss"] > 0 for e in later)  # logged with the step
    assert all("extra_loss" not in e for e in map(json.loads, (tmp_path / "off" / "events.jsonl").read_text()
               .splitlines()) if e["event"] == "step")  # lambda_1 = lambda_2 = 0: nothing added or logged

    # kill during task 2's checkpoint write, then resume: exactly the uninterrupted run
    calls = [0]
    original = ckpt.write_dir_atomically

    class Crash(BaseException):
        pass

    def crash(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise Crash
        return original(*args, **kwargs)

    monkeypatch.setattr(ckpt, "write_dir_atomically", crash)
    with pytest.raises(Crash):
        run_experiment(_toy({"lambda_1": 0.5}, **short), tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(ckpt, "write_dir_atomically", original)
    again = run_experiment(_toy({"lambda_1": 0.5}, **short), tmp_path / "resumed", resume=True, quiet=True)
    np.testing.assert_array_equal(again.accuracy_matrix, on.accuracy_matrix)
    assert _steps(tmp_path / "resumed") == steps_on
