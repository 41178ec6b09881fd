"""The fast MoRAM forward (split keys, top-k value gather) against a straightforward dense implementation.

The reference below is the formula as written in docs/methods.md, computed the obvious way: concatenate the
bank, build the full (N, R) weight matrix by scatter and multiply by the whole B_all.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankwise import MoRAMConfig
from rankwise.adapters import MoRAMLinear


def dense_moram(x, W, b, A_all, B_all, k, tau, delta, training):
    p = x @ A_all.T
    s = F.normalize(p, dim=-1, eps=1e-12)
    top_s, index = s.topk(min(max(k, 2), A_all.shape[0]), dim=-1)
    w = torch.zeros_like(s).scatter(-1, index, torch.softmax(top_s / tau, dim=-1))
    if not training:
        w = w * (s >= delta)
    return x @ W.T + b + (p * w) @ B_all.T


def make_layer(d_in, d_out, frozen_tasks, r, top_k, live, alpha=None, dtype=torch.float64, seed=0):
    """A layer whose bank holds `frozen_tasks * r` random atoms, plus a live task if `live`."""
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out).to(dtype)
    cfg = MoRAMConfig(r=r, top_k=top_k, tau=0.1, delta=0.1, lora_alpha=alpha, target_modules=["x"])
    layer = MoRAMLinear(base, cfg)
    for t in range(frozen_tasks + int(live)):
        layer.begin_task()
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn_like(layer.lora_B))
        if t < frozen_tasks:
            layer.end_task()
    return layer


def reference_inputs(layer):
    """Leaf copies of the live factors so the reference's gradients can be compared with the layer's."""
    A_new = B_new = None
    A_all, B_all = layer.bank_A.clone(), layer.bank_B.clone()
    if layer.lora_A is not None:
        A_new = layer.lora_A.detach().clone().requires_grad_(True)
        B_new = layer.lora_B.detach().clone().requires_grad_(True)
        A_all = torch.cat([A_all, A_new])
        B_all = torch.cat([B_all, B_new * layer.scaling], dim=1)
    return A_all, B_all, A_new, B_new


CASES = [  # (d_in, d_out, frozen tasks, r, top_k, live task)
    (16, 24, 0, 8, None, True),  # first task: k = R = 8, dense value path
    (16, 24, 2, 8, None, True),  # R = 24 > k = 8: gathered values, bank + live keys
    (32, 12, 5, 4, 3, True),  # R = 24, k = 3, d_out < d_in
    (16, 40, 4, 4, None, False),  # frozen bank only (evaluation after training)
    (16, 24, 1, 6, 12, True),  # k = 12 = R: dense path with a bank and a live task
    (16, 24, 3, 4, 1, False),  # top_k = 1 acts as 2
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_fast_path_equals_dense_formula_with_gradients(case, training, shape):
    d_in, d_out, frozen, r, top_k, live = case
    layer = make_layer(d_in, d_out, frozen, r, top_k, live, alpha=2.0 * r)
    layer.train(training)
    x = torch.randn(*shape, d_in, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    A_all, B_all, A_new, B_new = reference_inputs(layer)
    k = r if top_k is None else top_k
    expected = dense_moram(
        x_ref, layer.base_layer.weight, layer.base_layer.bias, A_all, B_all, k, 0.1, 0.1, training
    )
    out = layer(x)
    assert out.shape == (*shape, d_out)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # the inference path adds into the base output in place
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(layer.delta(x), expected - layer.base_layer(x), rtol=1e-9, atol=1e-9)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    if live:
        torch.testing.assert_close(layer.lora_A.grad, A_new.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(layer.lora_B.grad, B_new.grad, rtol=1e-10, atol=1e-10)
    assert not layer.bank_A.requires_grad and not layer.bank_BT.requires_grad


def test_inference_pruning_really_zeroes_atoms_in_the_fast_path():
    """With delta close to 1 nearly every selected atom is pruned at eval: output ~ base, not in training."""
    layer = make_layer(16, 24, 4, 4, None, False)
    layer.delta_threshold = 0.99
    x = torch.randn(9, 16, dtype=torch.float64)
    layer.eval()
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
    layer.train()
    assert (layer(x) - layer.base_layer(x)).abs().max() > 1e-3


@pytest.mark.parametrize("top_k", [None, 8])  # k = 4 and 8 < R = 16 (k = R keeps the dense product)
def test_pruned_inference_reads_only_the_surviving_atoms(top_k):
    """At inference with pruning only (token, atom) pairs with a non-zero weight are summed, and tokens
    that keep no atom are skipped: a value row that no token keeps is never read (NaN there would
    poison a weight-0 product), the output equals the dense formula, and gradient mode (training or an
    input that needs grad) keeps the full path."""
    layer = make_layer(16, 24, 4, 4, top_k, False)  # R = 16
    layer.eval()
    layer.delta_threshold = 0.4
    x = torch.randn(12, 16, dtype=torch.float64)
    s = F.normalize(x @ layer.bank_A.T, dim=-1)
    k = min(top_k or 4, 16)
    top_s, index = s.topk(k, dim=-1)
    w = torch.zeros_like(s).scatter(-1, index, torch.softmax(top_s / 0.1, dim=-1)) * (s >= 0.4)
    unused = (w == 0).all(dim=0)
    assert 0 < unused.sum() < 16 and 6 < (w > 0).any(dim=1).sum() < 12  # some tokens keep no atom at all
    expected = dense_moram(x, layer.base_layer.weight, layer.base_layer.bias, layer.bank_A, layer.bank_B, k, 0.1, 0.4, False)
    with torch.no_grad():
        layer.bank_BT[unused] = float("nan")
        out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.isnan(layer(x.requires_grad_(True))).any()  # with autograd every selected row is read


def test_bank_is_stored_contiguous_and_saved_in_the_dense_layout():
    layer = make_layer(16, 24, 3, 4, None, True, alpha=8.0)
    trained_B = torch.cat([layer.bank_B, layer.lora_B.detach() * 2.0], dim=1)
    layer.end_task()
    assert layer.bank_BT.is_contiguous() and layer.bank_A.is_contiguous()
    assert layer.bank_B.shape == (24, 16)
    torch.testing.assert_close(layer.bank_B, trained_B, rtol=0, atol=0)
    _, tensors = layer.adapter_state()
    assert tensors["bank_B"].shape == (24, 16) and tensors["bank_B"].is_contiguous()


@pytest.mark.parametrize("delta", [0.1, 0.45])  # 0.45: some tokens keep no atom (skipped by the top-k)
def test_activation_counts_match_dense_weights(delta):
    layer = make_layer(16, 24, 4, 4, None, False)  # R = 16, k = 4
    layer.delta_threshold = delta
    layer.eval()
    layer.reset_activation_stats()
    layer.track_activations = True
    x = torch.randn(40, 16, dtype=torch.float64)
    layer(x)
    s = F.normalize(x @ layer.bank_A.T, dim=-1)
    top_s, index = s.topk(4, dim=-1)
    w = torch.zeros_like(s).scatter(-1, index, torch.softmax(top_s / 0.1, dim=-1)) * (s >= delta)
    assert delta == 0.1 or 0 < (w == 0).all(dim=1).sum() < 40
    torch.testing.assert_close(layer.atom_hits, (w > 0).sum(0).double())
    assert layer.tokens_seen == 40


@pytest.mark.parametrize("live", [True, False])
def test_bfloat16_fast_path_matches_dense_formula_in_bfloat16(live):
    layer = make_layer(32, 48, 5, 4, None, live, dtype=torch.bfloat16)
    layer.eval()
    x = torch.randn(4, 6, 32, dtype=torch.bfloat16)
    A_all, B_all, _, _ = reference_inputs(layer)
    base = layer.base_layer
    if not live:  # same key matmul on both sides, so the same atoms are selected
        expected = dense_moram(x, base.weight, base.bias, A_all, B_all, 4, 0.1, 0.1, False)
        out = layer(x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    layer.train()
    out = layer(x)
    out.float().square().sum().backward() if live else None
    if live:
        assert all(torch.isfinite(p.grad.float()).all() for p in (layer.lora_A, layer.lora_B))
        assert layer.lora_B.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["lora", "codyra"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_fused_low_rank_forward_matches_formula_with_gradients(method, shape):
    """LoRA / CoDyRA add B h inside one addmm; outputs and gradients equal W x + b + s B (g * A x)."""
    from rankwise import CoDyRAConfig, LoRAConfig
    from rankwise.adapters import CoDyRALinear, LoRALinear

    torch.manual_seed(0)
    base = nn.Linear(16, 24).double()
    cls, cfg = (LoRALinear, LoRAConfig) if method == "lora" else (CoDyRALinear, CoDyRAConfig)
    layer = cls(base, cfg(r=4, lora_alpha=12.0, target_modules=["x"]))  # scaling 3
    layer.begin_task()
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn_like(layer.lora_B))
    params = {
        n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if p.requires_grad
    }
    gate = params.get("gate", torch.ones(4, dtype=torch.float64))
    x = torch.randn(*shape, 16, dtype=torch.float64)
    expected = base(x) + 3.0 * ((x @ params["lora_A"].T) * gate) @ params["lora_B"].T
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    for name, p in layer.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-12, atol=1e-12)


def test_pruned_inference_is_the_top_k_path_to_the_bit():
    """The pruned path drops exact zeros and adds the same per-token sums: in float32 its output equals
    the full top-k path's (taken when the input needs a gradient) bit for bit, so runs evaluated before
    it existed re-run exactly."""
    layer = make_layer(48, 40, 6, 8, 8, False, dtype=torch.float32)  # R = 48, k = 8
    layer.delta_threshold = 0.2
    layer.eval()
    x = torch.randn(5, 30, 48)
    with torch.no_grad():
        pruned = layer(x)
    full = layer(x.clone().requires_grad_(True)).detach()
    assert torch.equal(pruned, full) and not torch.equal(pruned, layer.base_layer(x))
