"""What the engine costs around the model: `rankwise run` against a bare PyTorch loop, same steps.

Both sides train the same model (all-MiniLM-L6-v2 with LoRA r=16, preset ``bert``) on the same real
text tasks (text-mtil agnews then trec), with the same seed, data order (`DataOrder`), optimizer,
schedule and loss (the backbone's own ``collate`` / ``loss``), and evaluate the same test items with
the prompt-feature cache on. The engine side is `run_experiment` with its defaults (events every
10 steps, a resumable snapshot every 50, a checkpoint per task, a report-free run directory); its
training time is the time spent inside the task loop (steps, logging, snapshots), its evaluation time
the time spent in evaluation rows. The bare side is the ~30-line loop below. The final adapter
tensors of both must be equal (checked), so the two sides did the same work.

Rounds alternate (engine, bare, bare, engine, ...) and the medians are compared:
throughput ratio = bare seconds / engine seconds (1.0 = the engine costs nothing; target >= 0.95).
A warm-up pair runs first and is not counted: the first model forward of a process pays its one-off
costs (page faults of the freshly allocated activations, lazy initialisation in torch and the
tokenizer), which would otherwise land on whichever side runs first. Each evaluation row's time is
recorded too (``row_eval_s``), so a gap can be located.

    RANKWISE_DATA=/path/to/shared/data python benchmarks/engine_overhead.py [--rounds 2] [--iterations 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import call_timer, machine_conditions  # noqa: E402

from rankwise.config import config_from_dict  # noqa: E402
from rankwise.engine import continual  # noqa: E402
from rankwise.engine.build import build_parts  # noqa: E402
from rankwise.engine.trainer import DataOrder, make_optimizer, make_scheduler  # noqa: E402

ROOT = Path(__file__).resolve().parent


def make_config(iterations: int, test_size: int) -> Any:
    return config_from_dict({
        "name": "engine_overhead", "seed": 0, "device": "cpu", "threads": 1,
        "method": {"name": "lora", "r": 16, "lora_alpha": 16, "lora_dropout": 0.0},
        "backbone": {"name": "sentence-encoder", "max_length": 64},
        "scenario": {"name": "text-mtil", "tasks": ["agnews", "trec"], "test_size": test_size},
        "train": {"iterations": iterations, "batch_size": 16, "optimizer": "adamw", "lr": 2e-3,
                  "schedule": "cosine", "warmup_iterations": 0},
        "eval": {"batch_size": 64},
    })  # fmt: skip


def engine_round(config: Any) -> tuple[float, list[float], dict[str, torch.Tensor]]:
    """(training s, evaluation s of each row, final adapter tensors) of one `run_experiment`."""
    with call_timer(continual, {"train": "train_task", "eval": "evaluate_all"}) as spent:
        with tempfile.TemporaryDirectory() as tmp:
            result = continual.run_experiment(config, Path(tmp) / "run", quiet=True)
            last = sorted((result.run_dir / "checkpoints").iterdir())[-1]
            from safetensors.torch import load_file

            tensors = load_file(last / "adapter_model.safetensors")
    return sum(spent["train"]), spent["eval"], tensors


def bare_round(config: Any) -> tuple[float, list[float], dict[str, torch.Tensor]]:
    """The same run as a bare loop: build, then per task train and evaluate every task."""
    parts = build_parts(config)
    model, backbone, cfg = parts.model, parts.backbone, parts.config.train
    train_s, eval_s = 0.0, []

    def evaluate() -> None:
        backbone.model.eval()
        with torch.no_grad(), backbone.evaluation():
            for task in parts.tasks:
                hits = 0
                for start in range(0, len(task.test), 64):
                    batch = backbone.collate(task.test[start : start + 64], task, False)
                    hits += sum(p == t for p, t in zip(backbone.predict(batch, task), backbone.targets(batch)))

    start = time.perf_counter()
    evaluate()  # the zero-shot row
    eval_s.append(time.perf_counter() - start)
    for index, task in enumerate(parts.tasks):
        start = time.perf_counter()
        model.begin_task(task.name)
        params = model.trainable_parameters()
        optimizer, order = make_optimizer(params, cfg), DataOrder(len(task.train), cfg.batch_size, 0, index)
        scheduler = make_scheduler(optimizer, cfg)
        model.train()
        for it in range(cfg.iterations):
            optimizer.zero_grad(set_to_none=True)
            backbone.loss(backbone.collate([task.train[i] for i in order.indices(it)], task, True), task).backward()
            optimizer.step()
            scheduler.step()
        model.end_task()
        train_s += time.perf_counter() - start
        start = time.perf_counter()
        evaluate()
        eval_s.append(time.perf_counter() - start)
    _, tensors = model.adapter_payload()
    return train_s, eval_s, tensors


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of (engine, bare) runs, alternating")
    parser.add_argument("--warmup", type=int, default=1, help="pairs run first and not counted")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "engine_overhead.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = make_config(args.iterations, args.test_size)
    samples: dict[str, list[tuple[float, float]]] = {"engine": [], "bare": []}
    rows: dict[str, list[list[float]]] = {"engine": [], "bare": []}
    finals: dict[str, dict[str, torch.Tensor]] = {}
    for r in range(-args.warmup, args.rounds):
        for side in (("engine", "bare") if r % 2 == 0 else ("bare", "engine")):
            train_s, row_s, finals[side] = (engine_round if side == "engine" else bare_round)(config)
            label = f"warm-up {r + args.warmup + 1}" if r < 0 else f"round {r + 1}"
            print(f"{label} {side}: train {train_s:.1f} s, eval {sum(row_s):.1f} s "
                  f"(rows {', '.join(f'{t:.2f}' for t in row_s)})", flush=True)  # fmt: skip
            if r >= 0:
                samples[side].append((train_s, sum(row_s)))
                rows[side].append(row_s)
    same = sorted(finals["engine"]) == sorted(finals["bare"]) and all(
        torch.equal(finals["engine"][k], finals["bare"][k]) for k in finals["engine"]
    )
    med = {s: [statistics.median(v[i] for v in samples[s]) for i in (0, 1)] for s in samples}
    report = {
        "command": "python benchmarks/engine_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {"model": "all-MiniLM-L6-v2", "method": "lora r=16", "tasks": ["agnews", "trec"],
                  "iterations_per_task": args.iterations, "batch_size": 16, "test_items_per_task": args.test_size,
                  "threads": 1},  # fmt: skip
        "warmup_pairs": args.warmup,
        "samples_s": samples,
        "row_eval_s": rows,
        "median_train_s": {s: med[s][0] for s in med},
        "median_eval_s": {s: med[s][1] for s in med},
        "train_throughput_engine_vs_bare": med["bare"][0] / med["engine"][0],
        "eval_throughput_engine_vs_bare": med["bare"][1] / med["engine"][1],
        "same_final_adapter": same,
        "machine": machine_conditions(),
    }
    print(json.dumps({k: report[k] for k in ("train_throughput_engine_vs_bare", "eval_throughput_engine_vs_bare",
                                              "same_final_adapter", "median_train_s", "median_eval_s")}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
