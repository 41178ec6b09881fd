"""Each adapter layer against a hand-written reference formula (numpy, float64, one token at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rankwise import CoDyRAConfig, LoRAConfig, MoRAMConfig
from rankwise.adapters import CoDyRALinear, LoRALinear, MoRAMLinear

SHAPES = [(5, 12), (2, 7, 12), (7, 2, 12), (2, 3, 4, 12)]


def _base(d_in=12, d_out=10, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def _np(t):
    return t.detach().double().numpy()


def _randomise(layer, seed=1):
    """Give B (zero at init) and the rest random values so the delta is not trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("shape", SHAPES)
def test_lora_matches_formula(shape):
    layer = LoRALinear(_base(), LoRAConfig(r=4, lora_alpha=8, target_modules=["x"]))
    layer.begin_task()
    _randomise(layer)
    x = torch.randn(*shape)
    W, b, A, B = (
        _np(t) for t in (layer.base_layer.weight, layer.base_layer.bias, layer.lora_A, layer.lora_B)
    )
    expected = np.einsum("oi,...i->...o", W + 2.0 * B @ A, _np(x)) + b
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_new_adapters_start_as_identity():
    for cfg, cls in [(LoRAConfig, LoRALinear), (CoDyRAConfig, CoDyRALinear), (MoRAMConfig, MoRAMLinear)]:
        base = _base()
        layer = cls(base, cfg(r=4, target_modules=["x"]))
        layer.begin_task()
        x = torch.randn(3, 12)
        torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_codyra_matches_formula(shape):
    layer = CoDyRALinear(_base(), CoDyRAConfig(r=6, target_modules=["x"]))
    layer.begin_task()
    _randomise(layer)
    with torch.no_grad():
        layer.gate[[1, 4]] = 0.0  # dead ranks contribute nothing
    x = torch.randn(*shape)
    W, b, A, B, g = (
        _np(t)
        for t in (layer.base_layer.weight, layer.base_layer.bias, layer.lora_A, layer.lora_B, layer.gate)
    )
    expected = np.einsum("oi,...i->...o", W + B @ np.diag(g) @ A, _np(x)) + b
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_codyra_init_follows_the_paper():
    torch.manual_seed(0)
    layer = CoDyRALinear(nn.Linear(256, 64), CoDyRAConfig(r=512, target_modules=["x"]))
    layer.begin_task()
    assert torch.all(layer.lora_B == 0)
    assert abs(layer.gate.mean().item()) < 0.15 and 0.85 < layer.gate.std().item() < 1.15  # N(0, 1), not ones
    bound = 1 / np.sqrt(256)  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert layer.lora_A.abs().max().item() <= bound and layer.lora_A.abs().max().item() > 0.95 * bound


def moram_reference(x, W, b, A_all, B_all, k, tau, delta, training):
    """One token at a time, float64: p = A x; s = p/||p||; top-k softmax(s/tau); eval: w *= s >= delta."""
    out = []
    for token in x.reshape(-1, x.shape[-1]):
        p = A_all @ token
        s = p / max(np.linalg.norm(p), 1e-12)
        kk = min(max(k, 2), len(s))
        top = np.argsort(-s, kind="stable")[:kk]
        e = np.exp((s[top] - s[top].max()) / tau)
        w = np.zeros_like(s)
        w[top] = e / e.sum()
        if not training:
            w[top] *= s[top] >= delta
        out.append(W @ token + b + B_all @ (p * w))
    return np.stack(out).reshape(*x.shape[:-1], -1)


def _moram_with_bank(tasks=3, r=4, scaling_alpha=None, seed=0, dropout=0.0, top_k=None, tau=0.5, delta=0.2):
    torch.manual_seed(seed)
    layer = MoRAMLinear(
        _base(seed=seed),
        MoRAMConfig(
            r=r,
            lora_alpha=scaling_alpha,
            lora_dropout=dropout,
            top_k=top_k,
            tau=tau,
            delta=delta,
            target_modules=["x"],
        ),
    )
    for t in range(tasks):
        layer.begin_task()
        _randomise(layer, seed=seed + t + 1)
        if t < tasks - 1:
            layer.end_task()
    return layer


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("top_k", [None, 1, 5])
def test_moram_matches_formula(shape, training, top_k):
    layer = _moram_with_bank(tasks=3, r=4, scaling_alpha=8, top_k=top_k)  # current task scaled by 2
    layer.train(training)
    x = torch.randn(*shape)
    A_all = np.concatenate([_np(layer.bank_A), _np(layer.lora_A)])
    B_all = np.concatenate([_np(layer.bank_B), 2.0 * _np(layer.lora_B)], axis=1)
    assert A_all.shape == (12, 12)
    expected = moram_reference(
        _np(x),
        _np(layer.base_layer.weight),
        _np(layer.base_layer.bias),
        A_all,
        B_all,
        k=4 if top_k is None else top_k,
        tau=0.5,
        delta=0.2,
        training=training,
    )
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-4)


def test_moram_delta_prunes_only_at_inference():
    layer = _moram_with_bank(tasks=2, r=4, delta=0.99)  # almost every score is below 0.99
    x = torch.randn(6, 12)
    layer.eval()
    eval_out = layer(x)
    layer.train()
    train_out = layer(x)
    base = layer.base_layer(x)
    assert not torch.allclose(train_out, base, atol=1e-3)  # training mixes the top-k atoms
    torch.testing.assert_close(eval_out, base, rtol=1e-5, atol=1e-5)  # eval: all pruned, no renormalisation


def test_moram_frozen_atoms_keep_their_trained_contribution():
    """alpha/r scaling is folded into the bank when freezing: output after end_task equals output before."""
    layer = _moram_with_bank(tasks=2, r=4, scaling_alpha=16)  # scale 4 while training
    layer.eval()
    x = torch.randn(5, 12)
    before = layer(x)
    layer.end_task()
    torch.testing.assert_close(layer(x), before, rtol=1e-6, atol=1e-6)
    assert layer.bank_A.shape == (8, 12) and layer.lora_A is None


def test_moram_new_atoms_are_added_at_begin_task_with_zero_values():
    layer = _moram_with_bank(tasks=2, r=4)
    layer.end_task()
    layer.begin_task()
    assert layer.num_atoms == 12 and torch.all(layer.lora_B == 0)
    assert layer.lora_A.abs().max() > 0


@pytest.mark.parametrize(
    "cls,cfg", [(LoRALinear, LoRAConfig), (CoDyRALinear, CoDyRAConfig), (MoRAMLinear, MoRAMConfig)]
)
def test_bfloat16(cls, cfg):
    base = _base().to(torch.bfloat16)
    layer = cls(base, cfg(r=4, target_modules=["x"]))
    layer.begin_task()
    _randomise(layer)
    x = torch.randn(2, 3, 12, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 10)
    assert all(p.dtype == torch.bfloat16 for p in layer.trainable_parameters())
    out.float().sum().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad.float()).all() for p in layer.trainable_parameters()
    )
    ref = cls(_base(), cfg(r=4, target_modules=["x"]))  # same math in float32
    ref.begin_task()
    with torch.no_grad():
        for p_ref, p in zip(ref.trainable_parameters(), layer.trainable_parameters()):
            p_ref.copy_(p.float())
        ref.base_layer.weight.copy_(base.weight.float())
        ref.base_layer.bias.copy_(base.bias.float())
    torch.testing.assert_close(out.float(), ref(x.float()), rtol=0.05, atol=0.1)


def test_base_weights_stay_frozen_and_only_current_factors_get_gradients():
    layer = _moram_with_bank(tasks=3, r=4)
    x = torch.randn(4, 12)
    layer(x).pow(2).sum().backward()
    assert layer.base_layer.weight.grad is None and not layer.base_layer.weight.requires_grad
    assert not layer.bank_A.requires_grad and not layer.bank_B.requires_grad
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None


def test_dropout_is_applied_to_the_adapter_input_only_in_training():
    layer = CoDyRALinear(_base(), CoDyRAConfig(r=4, lora_dropout=0.5, target_modules=["x"]))
    layer.begin_task()
    _randomise(layer)
    x = torch.randn(64, 12)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize(
    "cls,cfg", [(LoRALinear, LoRAConfig), (CoDyRALinear, CoDyRAConfig), (MoRAMLinear, MoRAMConfig)]
)
@pytest.mark.parametrize("bank", [False, True])
def test_bf16_autocast_with_float32_adapters(cls, cfg, bank):
    """float32 weights under CPU bf16 autocast (the engine's `train.bf16`): forward and backward work
    and stay close to the float32 result."""
    layer = cls(
        _base(),
        cfg(r=4, top_k=2, target_modules=["x"]) if cfg is MoRAMConfig else cfg(r=4, target_modules=["x"]),
    )
    if bank and cls is MoRAMLinear:
        layer.begin_task()
        _randomise(layer, seed=5)
        layer.end_task()
    layer.begin_task()
    _randomise(layer)
    x = torch.randn(2, 5, 12)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.trainable_parameters())
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.15)


@pytest.mark.parametrize("cls,cfg", [(LoRALinear, LoRAConfig), (CoDyRALinear, CoDyRAConfig)])
def test_bf16_autocast_draws_the_dropout_mask_once(cls, cfg):
    """Under CPU bf16 autocast (float32 factors, so the out-of-place path) the low-rank input is
    computed once: the output equals a hand-built forward with ONE dropout draw, and the RNG has moved
    by exactly one draw of x's shape (a second computation would draw a second, different mask)."""
    p = 0.5
    layer = cls(_base(), cfg(r=4, lora_alpha=8, lora_dropout=p, target_modules=["x"]))
    layer.begin_task()
    _randomise(layer)
    layer.train()
    x = torch.randn(2, 5, 12)

    torch.manual_seed(123)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    state_after_forward = torch.get_rng_state()

    torch.manual_seed(123)
    mask = torch.empty_like(x).bernoulli_(1 - p)  # the keep-mask one draw of nn.Dropout(p) makes
    torch.manual_seed(123)
    dropped = nn.functional.dropout(x, p, training=True)  # the one draw
    state_after_one_draw = torch.get_rng_state()
    torch.testing.assert_close(dropped, x * mask / (1 - p))  # the draw is the mask above, scaled
    s = 8 / 4
    gate = layer.gate * s if cls is CoDyRALinear else torch.full((4,), s)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias)
        h = nn.functional.linear(dropped, layer.lora_A) * gate
        expected = base + nn.functional.linear(h, layer.lora_B).to(base.dtype)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)
    assert torch.equal(state_after_forward, state_after_one_draw)
