"""Every adapter layer's forward compiles as one graph (``fullgraph=True``) and equals eager PyTorch.

The fast checks use the ``aot_eager`` backend: Dynamo captures the whole forward (a graph break
raises under ``fullgraph=True``) and AOTAutograd traces the backward, without generating code; one
test runs inductor, the backend ``train.compile`` uses, on MoRAM (the layer with the most ops).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from rankwise.adapters import moram as moram_module
from rankwise.adapters.base import AdapterLayer
from rankwise.adapters.codyra import CoDyRAConfig, CoDyRALinear
from rankwise.adapters.inflora import InfLoRAConfig, InfLoRALinear
from rankwise.adapters.lora import LoRAConfig, LoRALinear
from rankwise.adapters.moelora import MoELoRAConfig, MoELoRALinear
from rankwise.adapters.moram import MoRAMConfig, MoRAMLinear
from rankwise.adapters.olora import OLoRAConfig, OLoRALinear

D_IN, D_OUT = 12, 10


def _build(cls: type[AdapterLayer], config, tasks: int, finish_last: bool = False) -> AdapterLayer:
    """A layer after `tasks` tasks, every trained tensor moved off its init (B = 0 would hide errors)."""
    torch.manual_seed(0)
    layer = cls(nn.Linear(D_IN, D_OUT), config)
    for t in range(tasks):
        if cls is InfLoRALinear:
            layer.collect_task_inputs(torch.randn(40, D_IN))
        layer.begin_task()
        with torch.no_grad():
            for p in layer.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.3)
        if t < tasks - 1 or finish_last:
            layer.end_task()
    return layer


LAYERS: dict[str, Callable[[], AdapterLayer]] = {
    "lora": lambda: _build(LoRALinear, LoRAConfig(r=4, lora_alpha=8), 1),
    "lora_merged": lambda: _build(LoRALinear, LoRAConfig(r=4, merge_on_task_end=True), 2),
    "codyra": lambda: _build(CoDyRALinear, CoDyRAConfig(r=4, lora_alpha=8), 1),
    "olora": lambda: _build(OLoRALinear, OLoRAConfig(r=4, lora_dropout=0.0), 2),
    "inflora": lambda: _build(InfLoRALinear, InfLoRAConfig(r=3), 2),
    "moelora": lambda: _build(MoELoRALinear, MoELoRAConfig(r=3), 3),
    "moelora_top1": lambda: _build(MoELoRALinear, MoELoRAConfig(r=3, top_k=1), 3),
    "moram_first_task": lambda: _build(MoRAMLinear, MoRAMConfig(r=4, tau=0.1), 1),  # k = R: dense values
    "moram_bank_live": lambda: _build(MoRAMLinear, MoRAMConfig(r=4, tau=0.1, lora_alpha=8), 3),  # top-k gather
    "moram_frozen": lambda: _build(MoRAMLinear, MoRAMConfig(r=4, tau=0.1, delta=0.1), 3, finish_last=True),
    "moram_top_k_above_bank": lambda: _build(MoRAMLinear, MoRAMConfig(r=2, top_k=5, tau=0.1), 1),
}


def _run(fn: Callable, layer: AdapterLayer, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and, in train mode, the gradients of the input and every trainable tensor."""
    x = x.clone().requires_grad_(train)
    out = fn(x)
    if not train:
        return out.detach(), []
    out.square().sum().backward()
    params = layer.trainable_parameters()
    grads = [x.grad] + [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_compiles_as_one_graph_and_equals_eager(name, train):
    layer = LAYERS[name]().train(train)
    x = torch.randn(2, 5, D_IN)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # a graph break raises here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the top_k-above-bank warning of the eager call
        want, want_grads = _run(layer, layer, x, train)
        got, got_grads = _run(compiled, layer, x, train)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [(2, 0.05, 0.0), (5, 0.2, 0.15)], ids=["top2_no_prune", "top5_prune"])
def test_moram_inference_options_compile(options):
    """Evaluation with another top-k / tau / pruning threshold (`set_inference_options`) still compiles."""
    layer = LAYERS["moram_frozen"]().eval()
    layer.set_inference_options(*options)
    x = torch.randn(7, D_IN)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


def test_moram_activation_tracking_compiles_once_and_counts():
    """Tracked evaluation (atom hit counts) is one graph, and no recompile per batch: the token count is
    a tensor (an int attribute would be a guard, failing at every batch until Dynamo gave up)."""
    layer = LAYERS["moram_frozen"]().eval()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    eager = LAYERS["moram_frozen"]().eval()
    for model in (layer, eager):
        model.track_activations = True
        model.reset_activation_stats()
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=backend, dynamic=False)
    for n in (4, 4, 4):
        x = torch.randn(n, D_IN)
        compiled(x)
        eager(x)
    assert len(graphs) == 1
    assert layer.tokens_seen == eager.tokens_seen == 12
    torch.testing.assert_close(layer.atom_hits, eager.atom_hits, rtol=0, atol=0)
    assert layer.report()["activation_rate_per_task"] == eager.report()["activation_rate_per_task"]


def test_moram_budget_warning_is_eager_only():
    """top_k above the bank warns in eager mode; under compile the warning is skipped, not a graph break."""
    moram_module._BUDGET_WARNED.clear()
    layer = LAYERS["moram_top_k_above_bank"]().eval()
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(layer, fullgraph=True, backend="aot_eager")(torch.randn(3, D_IN))
    assert not [w for w in caught if "top_k" in str(w.message)]
    with pytest.warns(UserWarning, match="exceeds the bank of 2 atoms"):
        layer(torch.randn(3, D_IN))


def test_moram_inductor_equals_eager_train_and_eval():
    """The backend `train.compile` uses: generated code, fused elementwise ops; values and gradients to 1e-5."""
    layer = LAYERS["moram_bank_live"]()
    x = torch.randn(6, D_IN)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="inductor")
    for train in (True, False):
        layer.train(train)
        want, want_grads = _run(layer, layer, x, train)
        got, got_grads = _run(compiled, layer, x, train)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
