"""Image decoding off the step's path: `rankwise run` with ``data_workers`` 0, 1 and 2, same run.

A small open_clip CLIP at 224 px (random init; ViT width 256, 4 layers, patch 16, so a step is
short enough for decoding to matter) with LoRA r=16 trains on two real image tasks of
shared/data/images (Caltech-101 and the DTD subset, JPEG files decoded, randomly cropped, resized
and normalised by open_clip's training transform in every step) and evaluates both after each task.
The same config runs with ``train.data_workers = eval.data_workers`` = 0, 1, 2, in rotating order
over the rounds, after one warm-up run that is not counted; the training time (inside the task loop)
and the evaluation time (the rows) of each are recorded, and the medians compared:
speed-up = seconds with 0 workers / seconds with N workers.

    RANKWISE_DATA=/path/to/shared/data python benchmarks/data_workers.py [--rounds 2] [--iterations 20]

Evaluation scores must be equal for every N (checked); training with N >= 1 is the same run for
N = 1 and 2 (checked), and differs from N = 0 only in the crops' random draws.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import call_timer, machine_conditions  # noqa: E402

from rankwise.config import config_from_dict  # noqa: E402
from rankwise.engine import continual  # noqa: E402

ROOT = Path(__file__).resolve().parent
CLIP_224 = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


def make_config(workers: int, iterations: int, batch_size: int, test_size: int, images: Path) -> Any:
    return config_from_dict({
        "name": "data_workers", "seed": 0, "device": "cpu", "threads": 1,
        "method": {"name": "lora", "r": 16, "lora_alpha": 16, "lora_dropout": 0.0},
        "backbone": {"name": "open-clip", "model_config": CLIP_224, "eval_templates": "first", "train_augment": True},
        "scenario": {"name": "image-folder", "root": str(images), "tasks": ["caltech101", "dtd10"],
                     "max_train_per_task": 512, "max_test_per_task": test_size},
        "train": {"iterations": iterations, "batch_size": batch_size, "lr": 1e-3, "checkpoint_every": 1000,
                  "data_workers": workers},
        "eval": {"batch_size": 64, "data_workers": workers},
    })  # fmt: skip


def one_run(config: Any) -> tuple[float, float, np.ndarray, list[float]]:
    """(training s, evaluation s, accuracy matrix, step losses) of one `run_experiment`."""
    with call_timer(continual, {"train": "train_task", "eval": "evaluate_all"}) as spent:
        with tempfile.TemporaryDirectory() as tmp:
            result = continual.run_experiment(config, Path(tmp) / "run", quiet=True)
            events = [json.loads(x) for x in (result.run_dir / "events.jsonl").read_text().splitlines()]
            losses = [e["loss"] for e in events if e["event"] == "step"]
    return sum(spent["train"]), sum(spent["eval"]), result.accuracy_matrix, losses


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=Path, default=None, help="default: $RANKWISE_DATA/images")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "data_workers.json")
    args = parser.parse_args(argv)
    images = args.images or Path(os.environ.get("RANKWISE_DATA", ROOT.parent.parent / "shared" / "data")) / "images"
    torch.set_num_threads(1)
    configs = {n: make_config(n, args.iterations, args.batch_size, args.test_size, images) for n in args.workers}
    samples: dict[int, list[tuple[float, float]]] = {n: [] for n in args.workers}
    outputs: dict[int, tuple[np.ndarray, list[float]]] = {}
    one_run(configs[args.workers[0]])  # warm-up: the process's one-off costs land on no setting
    for r in range(args.rounds):
        order = args.workers[r % len(args.workers) :] + args.workers[: r % len(args.workers)]
        for n in order:
            train_s, eval_s, matrix, losses = one_run(configs[n])
            samples[n].append((train_s, eval_s))
            outputs[n] = (matrix, losses)
            print(f"round {r + 1} workers {n}: train {train_s:.1f} s, eval {eval_s:.1f} s", flush=True)
    matrices = [outputs[n][0] for n in args.workers]
    same_eval_zero_shot = all(np.array_equal(m[0], matrices[0][0]) for m in matrices)
    background = [n for n in args.workers if n > 0]
    same_run_background = all(
        np.array_equal(outputs[n][0], outputs[background[0]][0]) and outputs[n][1] == outputs[background[0]][1]
        for n in background
    )
    med = {n: [statistics.median(s[i] for s in samples[n]) for i in (0, 1)] for n in args.workers}
    base = args.workers[0]
    report = {
        "command": "python benchmarks/data_workers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {"model": "open_clip ViT (224 px, width 256, 4 layers, patch 16), random init", "method": "lora r=16",
                  "tasks": ["caltech101", "dtd10"], "iterations_per_task": args.iterations,
                  "batch_size": args.batch_size, "test_items_per_task": args.test_size, "threads": 1,
                  "warmup_runs": 1, "rounds": args.rounds},  # fmt: skip
        "samples_s": {str(n): samples[n] for n in args.workers},
        "median_train_s": {str(n): med[n][0] for n in args.workers},
        "median_eval_s": {str(n): med[n][1] for n in args.workers},
        "train_speedup_vs_in_process": {str(n): med[base][0] / med[n][0] for n in args.workers},
        "eval_speedup_vs_in_process": {str(n): med[base][1] / med[n][1] for n in args.workers},
        "same_zero_shot_scores": same_eval_zero_shot,
        "same_run_for_every_background_count": same_run_background,
        "machine": machine_conditions(),
    }
    print(json.dumps({k: report[k] for k in ("train_speedup_vs_in_process", "eval_speedup_vs_in_process",
                                              "same_zero_shot_scores", "same_run_for_every_background_count",
                                              "median_train_s", "median_eval_s")}, indent=1))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
