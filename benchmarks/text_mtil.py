"""Accuracy table on text-mtil with all-MiniLM-L6-v2: zero-shot, full FT, sequential LoRA, CoDyRA, MoRAM,
and the rivals O-LoRA, InfLoRA and task-level MoE-LoRA.

Every method sees the same tasks, iterations, batch size, test sample and seed; only the method
section (and full fine-tuning's learning rate, see ``FULL_LR``) differs. Writes
``benchmarks/results/text_mtil_quick.json`` (the quick table; the protocol's results are ``text_mtil.json``,
``benchmarks/protocol.py``) and prints a markdown table to paste into docs/text_mtil.md.

    python benchmarks/text_mtil.py                      # every method, 9 tasks
    python benchmarks/text_mtil.py --methods olora inflora moe-lora --threads 1
    python benchmarks/text_mtil.py --methods lora moram --set train.iterations=20
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

BASE: dict[str, Any] = yaml.safe_load(
    """
seed: 0
device: auto
backbone: {name: sentence-encoder, max_length: 64}
scenario: {name: text-mtil, shots: null, test_size: 60}
train: {iterations: 30, batch_size: 16, optimizer: adamw, lr: 2.0e-3, betas: [0.9, 0.999],
        schedule: cosine, log_every: 10, checkpoint_every: 1000}
eval: {batch_size: 100}
"""
)
#: full fine-tuning of all 22M weights at the adapters' 2e-3 wrecks BERT at once; 1e-5 is the usual
#: full-fine-tuning rate (ZSCL and the MTIL baselines fine-tune CLIP at 1e-5).
FULL_LR = 1.0e-5
METHODS: dict[str, dict[str, Any]] = {
    "zero-shot": {"name": "zero-shot"},
    "full": {"name": "full"},
    "lora": {"name": "lora", "r": 16},
    # k_max and ramp_steps scaled so that 15 proximal steps shrink the gates by about as much in
    # total (8.5 k_max ~ 0.63) as the paper's 250 steps at k_max = 0.005 (126 k_max) do; see docs/text_mtil.md.
    "codyra": {"name": "codyra", "r": 16, "k_max": 0.075, "ramp_steps": 15},
    "moram": {"name": "moram", "r": 16, "tau": 0.01, "delta": 0.2},
}
#: the rival methods run with the method section of their text-track preset (official defaults)
#: and the shared training budget above.
PRESET_METHODS = {"olora": "text_mtil_olora", "inflora": "text_mtil_inflora", "moe-lora": "text_mtil_moelora"}
ROOT = Path(__file__).resolve().parents[1]
for _method, _preset in PRESET_METHODS.items():
    METHODS[_method] = yaml.safe_load((ROOT / "configs" / f"{_preset}.yaml").read_text())["method"]


def run_config(method: str, overrides: list[str]) -> Any:
    from rankwise.config import apply_override, config_from_dict

    data = copy.deepcopy(BASE)
    data["name"] = f"bench_text_mtil_{method}"
    data["method"] = copy.deepcopy(METHODS[method])
    if method == "full":
        data["train"]["lr"] = FULL_LR
    for item in overrides:
        apply_override(data, item)
    return config_from_dict(data)


def rank_summary(run_dir: Path) -> dict[str, Any]:
    """CoDyRA: mean surviving rank per (layer, task); MoRAM: atoms per layer and mean activation rate."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    ends = [e for e in events if e.get("event") == "task_end" and e.get("rank_report")]
    if not ends:
        return {}
    report = ends[-1]["rank_report"]
    out: dict[str, Any] = {}
    merged = [r for layer in report for r in layer.get("merged_ranks", [])]
    if merged:
        out["codyra_mean_surviving_rank"] = sum(merged) / len(merged)
        out["codyra_surviving_rank_per_task"] = [
            sum(layer["merged_ranks"][t] for layer in report) / len(report)
            for t in range(len(report[0]["merged_ranks"]))
        ]
    if "bank_size" in report[0]:
        out["moram_bank_size_per_layer"] = report[0]["bank_size"]
        out["moram_bank_size_total"] = sum(layer["bank_size"] for layer in report)
        rates = [r for layer in report for r in (layer.get("activation_rate_per_task") or [])]
        if rates:
            out["moram_mean_activation_rate"] = sum(rates) / len(rates)
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        "| method | Transfer | Average | Last | BWT | ranks | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, res in results.items():
        m = res["metrics"]
        ranks = ""
        if "codyra_mean_surviving_rank" in res["ranks"]:
            ranks = f"mean surviving rank {res['ranks']['codyra_mean_surviving_rank']:.1f} / 16"
        elif "moram_bank_size_per_layer" in res["ranks"]:
            ranks = f"bank {res['ranks']['moram_bank_size_per_layer']} atoms/layer"
        bwt = m.get("bwt")
        lines.append(
            f"| {method} | {m.get('transfer', float('nan')):.1f} | {m.get('average', float('nan')):.1f} | "
            f"{m.get('last', float('nan')):.1f} | {'' if bwt is None else f'{bwt:.1f}'} | {ranks} | "
            f"{res['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="KEY=VALUE, as in rankwise run"
    )
    parser.add_argument("--runs", default="runs/bench_text_mtil", help="parent folder of the run directories")
    parser.add_argument("--out", default="benchmarks/results/text_mtil_quick.json")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from rankwise import io
    from rankwise.engine.continual import run_experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text())["results"] if out.exists() else {}
    for method in args.methods:
        config = run_config(method, args.overrides)
        run_dir = Path(args.runs) / method
        start = time.perf_counter()
        result = run_experiment(config, run_dir=run_dir, overwrite=True, quiet=True)
        wall = time.perf_counter() - start
        results[method] = {
            "config": config.to_dict(),
            "tasks": result.task_names,
            "accuracy_matrix": result.accuracy_matrix.tolist(),
            "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, type(None)))},
            "ranks": rank_summary(run_dir),
            "wall_s": round(wall, 1),
            "threads": torch.get_num_threads(),
        }
        print(f"{method}: {results[method]['metrics']}  {wall / 60:.1f} min", flush=True)
        # re-read before writing: several invocations (e.g. two processes, one per core) may share `out`
        merged = json.loads(out.read_text())["results"] if out.exists() else {}
        merged[method] = results[method]
        results = {m: merged[m] for m in METHODS if m in merged}
        command = "python benchmarks/text_mtil.py " + " ".join(argv if argv is not None else sys.argv[1:])
        io.write_json(out, {"benchmark": "text_mtil", "command": command.strip(), "results": results})
    print(table(results))


if __name__ == "__main__":
    main()
