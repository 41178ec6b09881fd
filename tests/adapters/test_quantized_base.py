"""Adapters over a quantized frozen base (bitsandbytes int8 and 4-bit nf4 linears, which run on the CPU).

The base weight is stored as int8 / packed uint8, so nothing can be merged into it: a merged task stays
a pair of factors that the layer adds to the base output (`AdapterLayer.base_output`). Every reference
here is computed by hand from the quantized layer's own output and the adapter's factors.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

from rankwise import CoDyRAConfig, LoRAConfig, MoRAMConfig, get_model, load_model  # noqa: E402
from rankwise.errors import RankwiseError  # noqa: E402


class Net(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.up, self.down = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _float_net() -> Net:
    torch.manual_seed(0)
    return Net(nn.Linear(64, 128), nn.Linear(128, 64))


def _quantize(linear: nn.Linear, kind: str) -> nn.Module:
    if kind == "int8":
        q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, quant_type="nf4",
                              compute_dtype=torch.float32)  # fmt: skip
    q.load_state_dict(linear.state_dict())
    return q.to("cpu")  # quantizes the weight


def _quantized_net(kind: str) -> Net:
    net = _float_net()
    return Net(_quantize(net.up, kind), _quantize(net.down, kind))


KINDS = ["int8", "nf4"]


def _move_factors(model, scale: float = 0.3) -> None:
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_base_is_quantized_and_factors_are_float(kind):
    model = get_model(_quantized_net(kind), LoRAConfig(r=4, target_modules=["up", "down"]))
    model.begin_task("t")
    for layer in model.adapter_layers().values():
        assert layer.base_is_quantized and not layer.base_layer.weight.dtype.is_floating_point
        assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
def test_lora_output_is_quantized_base_plus_the_low_rank_term_and_only_factors_get_grads(kind):
    net = _quantized_net(kind)
    x = torch.randn(5, 64)
    model = get_model(net, LoRAConfig(r=4, lora_alpha=8, target_modules=["up", "down"]))
    model.begin_task("t")
    _move_factors(model)
    up, down = model.adapter_layers()["up"], model.adapter_layers()["down"]

    def by_hand(layer, inp):
        return layer.base_layer(inp) + 2.0 * (inp @ layer.lora_A.t()) @ layer.lora_B.t()

    want = by_hand(down, torch.relu(by_hand(up, x)))
    got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
    assert all(not p.requires_grad for p in up.base_layer.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_codyra_end_task_keeps_the_output_and_the_quantized_bytes(kind):
    model = get_model(_quantized_net(kind), CoDyRAConfig(r=4, target_modules=["up", "down"]))
    x = torch.randn(6, 64)
    model.begin_task("t1")
    _move_factors(model)
    model.eval()
    with torch.no_grad():  # bitsandbytes repacks a 4-bit weight for its CPU kernel at the first forward
        model(x)
        weights = {n: layer.base_layer.weight.detach().clone() for n, layer in model.adapter_layers().items()}
        before = model(x)
    model.end_task()  # CoDyRA: prune and merge
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    for name, layer in model.adapter_layers().items():
        assert layer.merged_tasks == 1
        assert torch.equal(layer.base_layer.weight, weights[name])  # nothing written into the int8 / nf4 bytes
    # a second task on top: the merged one still counts
    model.begin_task("t2")
    _move_factors(model)
    with torch.no_grad():
        mid = model(x)
    assert not torch.allclose(mid, after, atol=1e-4)
    with pytest.raises(RankwiseError, match="quantized base"):
        model.merge_and_unload()


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_onto_a_freshly_quantized_base_is_identical(kind, tmp_path):
    model = get_model(_quantized_net(kind), CoDyRAConfig(r=4, target_modules=["up", "down"]))
    model.begin_task("t1")
    _move_factors(model)
    model.end_task()
    model.begin_task("t2")
    _move_factors(model)
    model.eval()
    x = torch.randn(4, 64)
    want = model(x)
    model.save_pretrained(tmp_path / "adapter")
    loaded = load_model(_quantized_net(kind), tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_moram_over_a_quantized_base(kind):
    model = get_model(_quantized_net(kind), MoRAMConfig(r=4, top_k=3, target_modules=["up", "down"]))
    x = torch.randn(5, 64)
    for task in ("t1", "t2"):
        model.begin_task(task)
        _move_factors(model)
        out = model(x)
        out.square().sum().backward()
        assert all(p.grad is not None for p in model.trainable_parameters())
        assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
        model.end_task()
    layer = model.adapter_layers()["up"]
    assert layer.num_atoms == 8 and layer.bank_A.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        got = model(x)
        bare = _quantized_net(kind)(x)
    assert not torch.allclose(got, bare, atol=1e-4)  # the bank changes the output


def _dequantized(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    if weight.dtype == torch.int8:  # per row: codes * absmax / 127
        return weight.data.float() * (weight.SCB.float()[:, None] / 127)
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()


@pytest.mark.parametrize("kind", KINDS)
def test_lora_output_is_the_dequantized_base_plus_the_low_rank_term(kind):
    """Training mode, where bitsandbytes' CPU kernels multiply by the de-quantized weight: the output
    is x W_q^T + b + 2 (x A^T) B^T with W_q de-quantized here from the stored codes and scales."""
    model = get_model(_quantized_net(kind), LoRAConfig(r=4, lora_alpha=8, target_modules=["up", "down"]))
    model.begin_task("t")
    _move_factors(model)
    layers = model.adapter_layers()
    weights = {n: _dequantized(layer.base_layer) for n, layer in layers.items()}

    def by_hand(name, inp):
        layer = layers[name]
        base = inp @ weights[name].t() + layer.base_layer.bias
        return base + 2.0 * (inp @ layer.lora_A.t()) @ layer.lora_B.t()

    x = torch.randn(7, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), by_hand("down", torch.relu(by_hand("up", x))), rtol=1e-5, atol=1e-5)


def test_training_after_an_evaluation_still_reaches_the_first_layer_over_nf4():
    """bitsandbytes repacks a 4-bit weight for its AVX512-BF16 CPU kernel at an eval-mode call and keeps
    using that kernel, which has no backward, in training mode; the adapter layer switches it off."""
    model = get_model(_quantized_net("nf4"), LoRAConfig(r=4, target_modules=["up", "down"]))
    x = torch.randn(5, 64)
    model.begin_task("t")
    _move_factors(model)
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    model.train()
    out = model(x)
    torch.testing.assert_close(out, evaluated, rtol=0, atol=0)  # one kernel in both modes
    out.square().sum().backward()
    up = model.adapter_layers()["up"]
    assert up.lora_A.grad is not None and up.lora_A.grad.abs().sum() > 0


def test_a_torchao_base_keeps_merges_as_factors():
    """torchao's weight-only int8 keeps nn.Linear with a tensor-subclass weight of float dtype that has
    no in-place add: it counts as quantized, so CoDyRA's merge stays a pair of factors."""
    quantization = pytest.importorskip("torchao.quantization")
    net = _float_net()
    quantization.quantize_(net, quantization.Int8WeightOnlyConfig())
    model = get_model(net, CoDyRAConfig(r=4, target_modules=["up", "down"]))
    x = torch.randn(6, 64)
    model.begin_task("t1")
    layers = model.adapter_layers()
    assert all(layer.base_is_quantized and layer.lora_A.dtype == torch.float32 for layer in layers.values())
    _move_factors(model)
    codes = {n: layer.base_layer.weight.dequantize().clone() for n, layer in layers.items()}
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.end_task()
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(layer.base_layer.weight.dequantize(), codes[n]) for n, layer in layers.items())
    with pytest.raises(RankwiseError, match="quantized base"):
        model.merge_and_unload()
