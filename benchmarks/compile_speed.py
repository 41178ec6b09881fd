"""``train.compile`` on the CPU: compiled (inductor, regional, as the engine does it) vs eager.

For LoRA, CoDyRA and MoRAM (16 frozen atoms + 16 live per layer, and a 176-atom bank at inference) on
all-MiniLM-L6-v2 (36 adapted linears, preset ``bert``), one run measures, interleaved:

* a training step (forward, backward, AdamW step; CoDyRA's proximal gate step too) eager vs compiled;
* an inference forward (no_grad) eager vs compiled;
* the compile time (the first compiled call of each: Dynamo + inductor code generation);
* that compiled outputs equal eager ones (relative difference of the scalar the model is trained on,
  dropout off, same adapter tensors on both sides).

The model is compiled with `rankwise.engine.compiled.compile_model` (each transformer block in
place). Ratios < 1 mean compiled is faster. Results: benchmarks/results/compile_speed.json.

    python benchmarks/compile_speed.py [--threads 1] [--repeats 7] [--batch 16 --seq 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians, machine_conditions  # noqa: E402
from speed import (  # noqa: E402
    RANK,
    minilm_workload,
    moram_model,
    randomise_values,
    shared_copy,
    train_step,
    training_setup,
)

import rankwise  # noqa: E402
from rankwise.engine.compiled import compile_model  # noqa: E402

ROOT = Path(__file__).resolve().parent


def _inference_model(w: Any, variant: str) -> torch.nn.Module:
    if variant.startswith("moram"):
        return moram_model(w.module, w.targets, int(variant[5:]), live=False).eval()
    cfg_cls = {"lora": rankwise.LoRAConfig, "codyra": rankwise.CoDyRAConfig}[variant]
    model = rankwise.get_model(shared_copy(w.module), cfg_cls(r=RANK, lora_alpha=RANK, target_modules=w.targets))
    model.begin_task("t0")
    randomise_values(model, torch.Generator().manual_seed(0))
    return model.eval()


def _first_call_seconds(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_variant(w: Any, variant: str, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # training: two models with the same start, one compiled
    # the same adapters on both sides: inits and MoRAM's banks (buffers outside the state dict) draw from
    # the global RNG, so each side is built from the same seed
    torch.manual_seed(1)
    eager_model, eager_params, eager_after = training_setup(w, variant)
    torch.manual_seed(1)
    comp_model, comp_params, comp_after = training_setup(w, variant)
    x = w.inputs(False)
    eager_model.eval()  # compared without dropout (a compiled dropout draws another stream)
    with torch.no_grad():
        loss_eager = float(w.loss(eager_model, x))
    compile_model(comp_model)
    comp_model.eval()
    with torch.no_grad():
        loss_comp = float(w.loss(comp_model, x))
    eager_model.train()
    comp_model.train()
    out["loss_rel_diff"] = abs(loss_eager - loss_comp) / abs(loss_eager)
    eager_step = train_step(w, eager_model, eager_params, eager_after)
    comp_step = train_step(w, comp_model, comp_params, comp_after)
    out["train_compile_s"] = _first_call_seconds(comp_step)
    timed = interleaved_medians({"eager": eager_step, "compiled": comp_step}, repeats, "cpu", warmup=1)
    out["train"] = timed
    out["train_ratio"] = timed["compiled"]["median_s"] / timed["eager"]["median_s"]
    # inference
    infer_variant = "moram176" if variant.startswith("moram") else variant
    torch.manual_seed(2)
    eager_inf = _inference_model(w, infer_variant)
    torch.manual_seed(2)
    comp_inf = _inference_model(w, infer_variant)
    compile_model(comp_inf)
    xi = w.inputs(False)

    def run(model: torch.nn.Module) -> Any:
        with torch.no_grad():
            return w.loss(model, xi)

    out["infer_compile_s"] = _first_call_seconds(lambda: run(comp_inf))
    want = run(eager_inf)
    out["infer_rel_diff"] = float((want - run(comp_inf)).abs() / want.abs())
    timed = interleaved_medians({"eager": lambda: run(eager_inf), "compiled": lambda: run(comp_inf)}, repeats, "cpu")
    out["infer"] = timed
    out["infer_ratio"] = timed["compiled"]["median_s"] / timed["eager"]["median_s"]
    out["infer_variant"] = infer_variant
    torch._dynamo.reset()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=["lora", "codyra", "moram32"])
    parser.add_argument("--quick", action="store_true", help="tiny random BERT: a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "compile_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = minilm_workload(args.quick, args.batch, args.seq, "cpu")
    w.module.requires_grad_(False)
    report: dict[str, Any] = {
        "command": "python benchmarks/compile_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "workload": w.info,
        "machine": machine_conditions(),
        "variants": {},
    }
    for variant in args.variants:
        report["variants"][variant] = bench_variant(w, variant, args.repeats)
    report["machine_after"] = machine_conditions()
    lines = [
        "| method | train step compiled / eager | inference compiled / eager | compile time train / inference | relative difference of the loss (train model, eval mode / inference model) |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        lines.append(
            f"| {name} (inference: {r['infer_variant']}) | {r['train_ratio']:.2f} | {r['infer_ratio']:.2f} | "
            f"{r['train_compile_s']:.0f} s / {r['infer_compile_s']:.0f} s | {r['loss_rel_diff']:.1e} / {r['infer_rel_diff']:.1e} |"
        )
    report["markdown"] = "\n".join(lines)
    print(report["markdown"])
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
