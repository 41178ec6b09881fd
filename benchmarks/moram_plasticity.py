"""Why MoRAM learns less than LoRA on the text track: plasticity at equal parameters and steps.

Each run trains one method on one task (or a two-task stream) of the protocol's text track
(`benchmarks/protocol.py`: 50 iterations of batch 16, validation split scored, seed 0, one thread)
and reports the gain on the task just learned over its zero-shot accuracy (validation items only,
so nothing here reads test data). LoRA and MoRAM both train r = 16 rank-1 directions per layer
(A: 16 x d_in, B: d_out x 16: the same parameter count) from the same initialisation (A kaiming,
B = 0), under the same schedule. What differs is MoRAM's mixture: per token a softmax with
temperature tau over the top-k key responses weights the atoms, so tau -> 0 makes each token use one
atom (a rank-1 update) and the weights always sum to 1.

    python benchmarks/moram_plasticity.py [--workers 2] [--tasks trec dbpedia]

Variants (``VARIANTS``): LoRA at two learning rates; MoRAM over lr x tau; MoRAM with tau large
(nearly uniform weights over the top-k); and, for the bank question, the second task of a two-task
stream against the same task learned alone (the first task's 16 frozen atoms then compete for the
top-k slots). Writes benchmarks/results/moram_plasticity.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402  (the protocol's text track, run_all and read_run)

from rankwise import io  # noqa: E402

#: (label, method, dotted-key setting)
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("LoRA lr 2e-3", "lora", {"train.lr": 2.0e-3}),
    ("LoRA lr 1e-2", "lora", {"train.lr": 1.0e-2}),
    *[
        (f"MoRAM lr {lr:g} tau {tau:g}", "moram", {"train.lr": lr, "method.tau": tau})
        for lr in (2.0e-3, 1.0e-2)
        for tau in (0.01, 0.1, 1.0)
    ],
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["trec", "dbpedia"], help="single-task runs")
    parser.add_argument("--stream", nargs=2, default=["trec", "subj"], help="two-task stream for the bank question")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default="runs/moram_plasticity")
    parser.add_argument("--out", default="benchmarks/results/moram_plasticity.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from rankwise.config import apply_override

    track = protocol.TEXT
    for item in args.overrides:
        apply_override(track.base, item)
    runs = Path(args.runs).resolve()
    jobs: dict[str, tuple[str, list[str], dict]] = {}
    for task in args.tasks:
        for label, method, setting in VARIANTS:
            name = f"{task}__{protocol.label(setting)}__{method}"
            jobs[name] = (label, [task], protocol.make_config(track, method, setting, [task], 0, "validation", runs / name))
    best_moram = {"train.lr": 1.0e-2, "method.tau": 0.1}
    second = args.stream[1]
    for label, tasks in ((f"MoRAM {second} alone", [second]), (f"MoRAM {second} after {args.stream[0]}", args.stream)):
        name = "bank__" + "_".join(tasks)
        jobs[name] = (label, tasks, protocol.make_config(track, "moram", best_moram, tasks, 0, "validation", runs / name))
    failures = protocol.run_all([c for _, _, c in jobs.values()], args.workers, runs / "logs")
    if failures:
        raise SystemExit("\n".join(failures))
    results: dict[str, Any] = {"base": track.base, "runs": {}}
    for name, (label, tasks, config) in jobs.items():
        run = protocol.read_run(runs / name)
        matrix = run["matrix"]
        t = len(tasks) - 1  # the last task of the run: its gain over zero-shot
        results["runs"][name] = {
            "label": label, "tasks": tasks, "setting": config["method"] | {"lr": config["train"]["lr"]},
            "zero_shot": matrix[0][t], "learned": matrix[t + 1][t], "gain": matrix[t + 1][t] - matrix[0][t],
            "matrix": matrix, "cost": run["cost"],
        }  # fmt: skip
    lines = ["| variant | " + " | ".join(f"{task} gain (zero-shot -> learned)" for task in args.tasks) + " |",
             "|---|" + "---|" * len(args.tasks)]  # fmt: skip
    for label, method, setting in VARIANTS:
        cells = []
        for task in args.tasks:
            r = results["runs"][f"{task}__{protocol.label(setting)}__{method}"]
            cells.append(f"{r['gain']:+.1f} ({r['zero_shot']:.1f} -> {r['learned']:.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name in (n for n in jobs if n.startswith("bank__")):
        r = results["runs"][name]
        lines.append(f"| {r['label']} | {r['gain']:+.1f} ({r['zero_shot']:.1f} -> {r['learned']:.1f}) |")
    print("\n".join(lines))
    out = Path(args.out)
    io.write_json(out, results)  # atomic: a stopped protocol never leaves half a results file


if __name__ == "__main__":
    main()
