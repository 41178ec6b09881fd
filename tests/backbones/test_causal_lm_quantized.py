"""`backbone.quantize: int8 | nf4` on a tiny random Llama (bitsandbytes' CPU kernels).

References are independent of the quantized path: the int8 / nf4 codes are checked against the float
weights by formula, and every adapter method over the quantized base is compared with the same adapter
loaded onto a *float* Llama whose weights are the de-quantized ones (where merges are written into the
weights, the ordinary path).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_causal_lm import save_tiny_llama, save_tiny_trace
from torch import nn

from rankwise.adapters import get_method, get_model, load_model
from rankwise.backbones.causal_lm import CausalLMConfig, build_backbone
from rankwise.backbones.quantize import base_weight_bytes
from rankwise.errors import ConfigError

try:
    import bitsandbytes as bnb
except ImportError:  # the error-path tests below still run
    bnb = None
needs_bnb = pytest.mark.skipif(bnb is None, reason="bitsandbytes is not installed (rankwise[quant])")

KINDS = ["int8", "nf4"]
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[1, 6, 7, 8, 9, 10, 11, 12], [1, 13, 14, 15, 16, 17, 18, 19]])
#: bitsandbytes' NF4 code book (normalised by each block's absmax)
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """test_causal_lm's tiny Llama, widened to hidden 64 / intermediate 128: nf4 needs in_features % 64 == 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama_q")
    save_tiny_llama(folder)
    config = LlamaConfig.from_pretrained(folder)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def backbone(folder, quantize="none", dtype="float32"):
    return build_backbone(
        CausalLMConfig(path=str(folder), max_length=32, quantize=quantize, dtype=dtype), "cpu"
    )


def dequantized(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    if weight.dtype == torch.int8:
        return weight.data.float() * (weight.SCB.float()[:, None] / 127)
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))}


def dequantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each quantized layer's de-quantized weight (call it before an eval-mode forward: bitsandbytes
    repacks a 4-bit weight for its CPU bfloat16 kernel then)."""
    return {name: dequantized(layer) for name, layer in quantized_layers(model).items()}


def float_model(folder, weights: dict[str, torch.Tensor]) -> nn.Module:
    """The float Llama with these layers' weights replaced (the ordinary, unquantized path)."""
    model = backbone(folder).model
    with torch.no_grad():
        for name, weight in weights.items():
            model.get_submodule(name).weight.copy_(weight)
    return model


@needs_bnb
@pytest.mark.parametrize("kind", KINDS)
def test_decoder_linears_are_quantized_from_the_float_weights_and_the_rest_is_kept(tiny_dir, kind):
    ref = backbone(tiny_dir).model
    model = backbone(tiny_dir, kind).model
    decoder = [n for n, m in ref.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert sorted(quantized_layers(model)) == sorted(decoder) and len(decoder) == 14
    assert type(model.lm_head) is nn.Linear and torch.equal(model.lm_head.weight, ref.lm_head.weight)
    assert torch.equal(model.model.embed_tokens.weight, ref.model.embed_tokens.weight)
    assert not any(p.requires_grad for layer in quantized_layers(model).values() for p in layer.parameters())
    for name in decoder:
        W, layer = ref.get_submodule(name).weight.detach(), model.get_submodule(name)
        if kind == "int8":  # LLM.int8() of W in float16: per row, codes round(127 W / absmax), scale absmax
            W = W.half().float()
            absmax = W.abs().amax(1)
            assert layer.weight.dtype == torch.int8 and torch.equal(layer.weight.SCB, absmax)
            assert torch.equal(layer.weight.data.float(), torch.round(W * (127 / absmax[:, None])))
        else:  # nf4, per block of 64: absmax times the code nearest to W / absmax
            assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == W.numel() // 2
            blocks = W.reshape(-1, 64)
            absmax = blocks.abs().amax(1, keepdim=True)
            nearest = NF4[((blocks / absmax)[..., None] - NF4).abs().argmin(-1)] * absmax
            torch.testing.assert_close(dequantized(layer), nearest.view_as(W), rtol=1e-6, atol=1e-7)
    deq = float_model(tiny_dir, dequantized_weights(model))
    with torch.no_grad():  # training mode: bitsandbytes' CPU kernels multiply by the de-quantized weight
        got, want = model.train()(IDS).logits, ref(IDS).logits
        torch.testing.assert_close(got, deq(IDS).logits, rtol=1e-5, atol=1e-5)
        # eval mode: int8 quantizes the inputs too; nf4 keeps the same kernel (the bf16 one is switched off)
        evaluated = model.eval()(IDS).logits
        if kind == "nf4":
            torch.testing.assert_close(evaluated, got, rtol=0, atol=0)
        else:
            assert 0 < (evaluated - got).abs().max() < 0.05 * float(got.abs().max())
    scale = float(want.abs().max())
    assert (got - want).abs().max() < (0.02 if kind == "int8" else 0.2) * scale


@needs_bnb
def test_base_weight_bytes_by_formula(tiny_dir):
    float_model = backbone(tiny_dir).model
    shapes = [
        m.weight.shape for n, m in float_model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"
    ]
    numel = sum(o * i for o, i in shapes)
    head = float_model.lm_head.weight.numel() * 4
    assert base_weight_bytes(float_model) == {"float": 4 * numel + head, "int8": 0, "nf4": 0}
    int8 = base_weight_bytes(backbone(tiny_dir, "int8").model)
    assert int8 == {"float": head, "int8": numel + 4 * sum(o for o, _ in shapes), "nf4": 0}
    nf4 = base_weight_bytes(backbone(tiny_dir, "nf4").model)
    assert nf4 == {"float": head, "int8": 0, "nf4": numel // 2 + 4 * numel // 64}


METHODS = {
    "lora": {"r": 4, "merge_on_task_end": True},
    "codyra": {"r": 4},
    "moram": {"r": 4, "top_k": 3},
    "olora": {"r": 4},
    "inflora": {"r": 4},
    "moe-lora": {"r": 4},
}


def _begin(model, name):
    if model.needs_task_inputs:
        with torch.no_grad(), model.collecting_task_inputs():
            model(IDS)
    model.begin_task(name)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.2)


def _end(model):
    if model.needs_task_inputs_at_end:
        with torch.no_grad(), model.collecting_task_inputs():
            model(IDS)
    model.end_task()


@needs_bnb
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_over_a_quantized_base_is_the_float_model_of_its_dequantized_weights(
    tiny_dir, kind, method, tmp_path
):
    """Two tasks (with end_task's merge between) over the quantized base, in training mode (where the CPU
    kernels multiply by the de-quantized weight), against the same adapter on the float model of the
    de-quantized weights, where merges are written into the weights."""
    torch.manual_seed(0)
    config = get_method(method).config(**METHODS[method], lora_dropout=0.0, target_modules=TARGETS)
    llama = backbone(tiny_dir, kind).model.train()
    weights = dequantized_weights(llama)
    model = get_model(llama, config)
    layers = quantized_layers(model)
    codes = {n: m.weight.data.clone() for n, m in layers.items()}
    _begin(model, "t1")
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    with torch.no_grad():
        before = model(IDS).logits
    _end(model)  # lora / codyra / olora / inflora merge here: kept as factors over the quantized base
    with torch.no_grad():
        after = model(IDS).logits
    if model.mergeable:
        assert all(layer.merged_tasks == 1 for layer in model.adapter_layers().values())
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    _begin(model, "t2")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    model(IDS).logits.square().sum().backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.trainable_parameters()) > 0
    assert all(not p.requires_grad and p.grad is None for m in layers.values() for p in m.parameters())
    optimizer.step()
    assert all(torch.equal(m.weight.data, codes[n]) for n, m in layers.items())  # the codes never change
    with torch.no_grad():
        got = model(IDS).logits
    model.save_pretrained(tmp_path / "adapter")
    reference = load_model(float_model(tiny_dir, weights), tmp_path / "adapter").train()
    with torch.no_grad():
        torch.testing.assert_close(got, reference(IDS).logits, rtol=1e-4, atol=1e-5)
        # onto a freshly quantized base: bit for bit, in eval mode too
        again = load_model(backbone(tiny_dir, kind).model, tmp_path / "adapter").eval()
        torch.testing.assert_close(again(IDS).logits, model.eval()(IDS).logits, rtol=0, atol=0)


@needs_bnb
@pytest.mark.parametrize("kind, factor_dtype", [("int8", torch.float32), ("nf4", torch.bfloat16)])
def test_bfloat16_model_factors_take_the_compute_dtype(tiny_dir, kind, factor_dtype):
    model = get_model(
        backbone(tiny_dir, kind, dtype="bfloat16").model,
        get_method("codyra").config(r=4, target_modules=TARGETS),
    )
    _begin(model, "t")
    assert {p.dtype for p in model.trainable_parameters()} == {factor_dtype}
    logits = model(IDS).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.trainable_parameters())


# -- errors -------------------------------------------------------------------------------------------
def test_an_unknown_quantize_value_names_the_field_and_the_choices():
    with pytest.raises(
        ConfigError, match=r"backbone\.quantize='int4' is invalid: expected one of 'none', 'int8', 'nf4'"
    ):
        CausalLMConfig(quantize="int4")
    from rankwise.config import config_from_dict

    with pytest.raises(ConfigError, match=r"backbone\.quantize"):
        config_from_dict({"name": "x", "method": {"name": "lora"}, "scenario": {"name": "trace", "root": "."},
                          "backbone": {"name": "causal-lm", "quantize": "fp8"}})  # fmt: skip


def test_without_bitsandbytes_the_error_is_one_line_naming_the_extra(tiny_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # import fails as if not installed
    assert backbone(tiny_dir).model is not None  # quantize: none never needs it
    with pytest.raises(ConfigError) as info:
        backbone(tiny_dir, "nf4")
    message = str(info.value)
    assert (
        "\n" not in message
        and "backbone.quantize='nf4'" in message
        and 'pip install "rankwise[quant]"' in message
    )


# -- the engine ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_folders(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("quantized_run")
    save_tiny_trace(root)
    return root


def run_config(tiny_dir, data, kind, method="codyra", iterations=30):
    from rankwise.config import config_from_dict

    extra = {"r": 4, "k_max": 0.005} if method == "codyra" else {}
    return config_from_dict({
        "name": f"q_{kind}", "seed": 0, "device": "cpu", "method": {"name": method, **extra},
        "backbone": {"name": "causal-lm", "path": str(tiny_dir), "max_length": 32, "quantize": kind},
        "scenario": {"name": "trace", "root": str(data), "tasks": ["color", "question"],
                     "metrics": {"question": "edit_similarity"}, "max_new_tokens": 4},
        "train": {"iterations": iterations, "batch_size": 8, "optimizer": "adam", "lr": 2e-2,
                  "schedule": "constant", "grad_clip": 1.0, "log_every": 1, "checkpoint_every": 100},
        "eval": {"batch_size": 8},
    })  # fmt: skip


@needs_bnb
@pytest.mark.parametrize("kind", KINDS)
def test_engine_trains_two_tasks_over_a_quantized_base_and_exports_onto_the_float_base(
    tiny_dir, run_folders, tmp_path, kind
):
    from transformers import AutoModelForCausalLM

    from rankwise.engine.continual import run_experiment
    from rankwise.engine.export_run import export_run

    result = run_experiment(run_config(tiny_dir, run_folders, kind), run_dir=tmp_path / "run", quiet=True)
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    losses: dict[int, list[float]] = {}
    for event in events:
        if "loss" in event and "task" in event and "iteration" in event:
            losses.setdefault(event["task"], []).append(event["loss"])
    assert sorted(losses) == [1, 2] and all(len(v) == 30 for v in losses.values())
    for task_losses in losses.values():  # the loss falls on both tasks (about 3.4 -> 2.1 / 2.4 measured)
        assert max(task_losses[-5:]) < 0.8 * task_losses[0]
    assert result.accuracy_matrix[1][0] == 100.0  # task 1 learned ("blue")
    # export --to merged: the adapter folded into the float base's weights, a plain transformers folder
    folder = export_run(result.run_dir, "merged", out=tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert all(type(m) is nn.Linear for m in merged.modules() if isinstance(m, nn.Linear))
    checkpoint = sorted((result.run_dir / "checkpoints").glob("task_2_*"))[0]
    float_run = load_model(backbone(tiny_dir).model, checkpoint).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, float_run(IDS).logits, rtol=1e-4, atol=1e-5)


@needs_bnb
def test_full_fine_tuning_of_a_quantized_base_is_refused(tiny_dir, run_folders, tmp_path):
    from rankwise.engine.continual import run_experiment

    with pytest.raises(ConfigError, match=r"method\.name='full'.*quantized.*backbone\.quantize: none"):
        run_experiment(
            run_config(tiny_dir, run_folders, "nf4", method="full"), run_dir=tmp_path / "r", quiet=True
        )
