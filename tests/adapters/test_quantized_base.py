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
