"""InfLoRA: A designed from the projected input covariance, the GPM memory, merge, save/load, engine."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rankwise.adapters import get_model, load_model
from rankwise.adapters.inflora import InfLoRAConfig, InfLoRALinear, energy_threshold
from rankwise.errors import ConfigError, LifecycleError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing catches it."""


def _model(d: int = 12, out: int = 5, **cfg) -> tuple[nn.Module, InfLoRALinear]:
    torch.manual_seed(0)
    wrapped = get_model(nn.Sequential(nn.Linear(d, out)), InfLoRAConfig(target_modules=["0"], **cfg))
    return wrapped, wrapped.adapter_layers()["0"]


def _task(wrapped, name: str, x: torch.Tensor) -> None:
    with torch.no_grad(), wrapped.collecting_task_inputs():
        wrapped(x)
    wrapped.begin_task(name)


def test_a_is_orthogonal_to_the_memory_and_is_the_top_eigenvectors_of_the_projected_covariance():
    d, r = 12, 3
    wrapped, layer = _model(d, r=r, lamb=0.95)
    g = torch.Generator().manual_seed(1)
    planted = torch.linalg.qr(torch.randn(d, 4, generator=g))[0]  # task 1 lives in a 4-dim subspace
    x1 = torch.randn(200, 4, generator=g) @ planted.T + 1e-3 * torch.randn(200, d, generator=g)
    _task(wrapped, "a", x1)
    wrapped.end_task()
    U = layer.memory
    assert U.shape[1] >= 1
    torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1], dtype=U.dtype), rtol=0, atol=1e-10)
    # the memory found the planted subspace: its top directions lie in span(planted)
    assert float((U - planted.double() @ (planted.double().T @ U)).norm()) < 1e-2

    x2 = torch.randn(300, d, generator=g) * torch.linspace(0.5, 3.0, d)
    _task(wrapped, "b", x2)
    A = layer.lora_A.detach().double()
    assert float((A @ U).abs().max()) < 1e-5  # A U_M = 0
    # independent: covariance, projector, eigh, top-r
    C = (x2.double().T @ x2.double()) / x2.shape[0]
    P = torch.eye(d, dtype=torch.float64) - U @ U.T
    vals, vecs = torch.linalg.eigh(P @ C @ P)
    top = vecs[:, -r:].flip(1)
    scale = 1 / math.sqrt(3)
    # eigenvectors are defined up to sign: compare the projectors and each row up to sign
    torch.testing.assert_close(A.T @ A / scale**2, top @ top.T, rtol=0, atol=1e-5)
    for row, vec in zip(A / scale, top.T):
        assert min(float((row - vec).norm()), float((row + vec).norm())) < 1e-5


def test_only_b_trains_and_the_layer_starts_equal_to_the_base():
    wrapped, layer = _model()
    x = torch.randn(20, 12)
    base = layer.base_layer(x).detach()
    _task(wrapped, "a", x)
    assert wrapped.trainable_parameters() == [layer.lora_B]
    assert not layer.lora_A.requires_grad and layer.lora_B.requires_grad
    torch.testing.assert_close(wrapped(x), base, rtol=0, atol=0)  # B = 0


def test_memory_grows_by_the_energy_rule_hand_checked():
    d = 6
    wrapped, layer = _model(d, r=2, lamb=0.95, lame=1.0, threshold_tasks=10)
    lam = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25, 0.25])
    # X^T X / 6 = diag(lam): singular values of C are lam, energies lam^2 = 16, 4, 1, .25, .0625, .0625
    # (total 21.375): cumulative .749, .936, .982, ... -> 2 of them are < 0.95 -> keep e1, e2
    _task(wrapped, "a", torch.diag(lam.sqrt()) * math.sqrt(d))
    wrapped.end_task()
    e = torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(layer.memory @ layer.memory.T, e[:, :2] @ e[:, :2].T, rtol=0, atol=1e-12)
    assert energy_threshold(layer.config, 1) == pytest.approx(0.955)
    # task 2: C = diag(1, 1, 4, 2, .1, .1), energies 1, 1, 16, 4, .01, .01 (total 22.02); outside the
    # memory 16, 4, .01, .01: covered (22.02 - 20.02) / 22.02 = .091 -> + 16/22.02 = .817 (< .955)
    # -> + 4/22.02 = .999 (stop): e3 and e4 join the memory
    mu = torch.tensor([1.0, 1.0, 4.0, 2.0, 0.1, 0.1])
    _task(wrapped, "b", torch.diag(mu.sqrt()) * math.sqrt(d))
    A = layer.lora_A.detach().double() * math.sqrt(3)
    torch.testing.assert_close(A.abs(), e[[2, 3]], rtol=0, atol=1e-6)  # top of P C P: e3, e4
    wrapped.end_task()
    torch.testing.assert_close(layer.memory @ layer.memory.T, e[:, :4] @ e[:, :4].T, rtol=0, atol=1e-10)
    assert layer.report()["memory_rank"] == 4


def test_merge_at_task_end_is_exact():
    wrapped, layer = _model(lora_alpha=6.0, r=3)
    x = torch.randn(30, 12)
    _task(wrapped, "a", x)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn_like(layer.lora_B))
    W, A, B = layer.base_layer.weight.detach().clone(), layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    before = wrapped(x).detach()
    wrapped.end_task()
    expected = W + ((B * 2.0).float() @ A.float())
    torch.testing.assert_close(layer.base_layer.weight, expected, rtol=0, atol=0)
    assert layer.lora_A is None and layer.merged_tasks == 1
    torch.testing.assert_close(wrapped(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mid_task", [False, True])
def test_save_load_is_bit_identical(tmp_path, mid_task):
    wrapped, layer = _model(r=2)
    g = torch.Generator().manual_seed(2)
    _task(wrapped, "a", torch.randn(40, 12, generator=g))
    with torch.no_grad():
        layer.lora_B.add_(torch.randn(layer.lora_B.shape, generator=g))
    wrapped.end_task()
    _task(wrapped, "b", torch.randn(40, 12, generator=g))
    with torch.no_grad():
        layer.lora_B.add_(torch.randn(layer.lora_B.shape, generator=g))
    if not mid_task:
        wrapped.end_task()
    wrapped.save_pretrained(tmp_path / "ad")
    torch.manual_seed(0)
    loaded = load_model(nn.Sequential(nn.Linear(12, 5)), tmp_path / "ad")
    other = loaded.adapter_layers()["0"]
    x = torch.randn(7, 12)
    torch.testing.assert_close(loaded(x), wrapped(x), rtol=0, atol=0)
    torch.testing.assert_close(other.memory, layer.memory, rtol=0, atol=0)
    assert other.tasks_seen == layer.tasks_seen
    if mid_task:
        torch.testing.assert_close(other.lora_A, layer.lora_A, rtol=0, atol=0)
        torch.testing.assert_close(other.memory_next, layer.memory_next, rtol=0, atol=0)
        assert loaded.trainable_parameters() == [other.lora_B]
        loaded.end_task()
        wrapped.end_task()
        torch.testing.assert_close(other.memory, layer.memory, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), wrapped(x), rtol=0, atol=0)


def test_errors():
    wrapped, _ = _model()
    with pytest.raises(LifecycleError, match="collecting_task_inputs"):
        wrapped.begin_task("a")  # no collection pass
    for bad in (dict(lamb=0.0), dict(lamb=1.5), dict(lamb=0.9, lame=0.8), dict(threshold_tasks=0),
                dict(a_scale=-1.0), dict(collect_batches=0), dict(merge_on_task_end=False)):  # fmt: skip
        with pytest.raises(ConfigError, match=next(iter(bad))):
            InfLoRAConfig(**bad)


def test_engine_runs_inflora_and_resume_is_exact(tmp_path, monkeypatch):
    from toy_helpers import toy_dict

    from rankwise.config import config_from_dict
    from rankwise.engine import checkpoint as ckpt
    from rankwise.engine.continual import run_experiment

    torch.set_num_threads(1)
    data = toy_dict("inflora", iterations=9, checkpoint_every=4)
    data["method"].update(r=4, collect_batches=2)
    data["backbone"].update(dim=16, embed_dim=16)

    def config():
        return config_from_dict(copy.deepcopy(data))

    reference = run_experiment(config(), tmp_path / "ref", quiet=True)
    assert np.isfinite(reference.accuracy_matrix).all()
    run_dir = tmp_path / "run"
    original, calls = ckpt.write_state, [0]

    def crash_at_sixth(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:  # task 2's iteration-8 snapshot, not committed: resumes at 4
            raise Crash
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_state", crash_at_sixth)
        with pytest.raises(Crash):
            run_experiment(config(), run_dir, quiet=True)
    assert ckpt.read_state(run_dir / "state")["iteration"] == 4
    result = run_experiment(config(), run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, reference.accuracy_matrix)
