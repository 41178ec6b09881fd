"""Several runs in one report: overlaid curves, and seeds averaged with 95% intervals.

Runs whose configs are equal except for ``name``, ``seed``, ``device``, ``threads`` and ``output`` are
repeats of one experiment (a *group*). For a group of ``n`` runs, each quantity (a metric, the loss
at a step, the mean accuracy after a task) is reported as

    mean  +-  t_{0.975, n-1} * s / sqrt(n),      s = sample standard deviation (ddof = 1),

the two-sided 95% Student-t interval of the mean; a group of one run has no interval.

Files (written by `rankwise.report.write_report` when it is given two or more runs):

* ``overlay_loss.png``      training loss per step, one curve per group (tasks in sequence), a band
  for the 95% interval where a group has several seeds;
* ``overlay_accuracy.png``  mean accuracy over all tasks after each task (0 = zero-shot), same style;
* report.md gains a table of Transfer / Average / Last / BWT per group as ``mean +- half-width``, and,
  when the runs wrote per-item scores (``eval.item_scores: true``), the paired bootstrap of every
  difference between two groups over their common seeds and test items (`rankwise.paired`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.errors import RankwiseError

#: t_{0.975, df} for df = 1..30 (Student t, two-sided 95%)
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054
#: runs that differ only in these keys are repeats (seeds) of one experiment
NOT_EXPERIMENT = ("name", "seed", "device", "threads", "output")
METRICS = ("transfer", "average", "last", "bwt")


def t_quantile_975(df: int) -> float:
    """``t_{0.975, df}``: the table for df <= 30, beyond it the Cornish-Fisher expansion in 1/df
    (``z + g1/df + g2/df^2 + g3/df^3``, error < 2e-6 at df = 31, shrinking with df)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_interval(values: Any) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval) over the last axis; half-width NaN for one value."""
    data = np.asarray(values, dtype=float)
    n = data.shape[-1]
    mean = data.mean(axis=-1)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, t_quantile_975(n - 1) * data.std(axis=-1, ddof=1) / math.sqrt(n)


def group_runs(runs: list[Any]) -> list[list[Any]]:
    """Runs grouped by their config without `NOT_EXPERIMENT` keys, in order of first appearance."""
    groups: dict[str, list[Any]] = {}
    for run in runs:
        key = json.dumps(
            {k: v for k, v in run.config.items() if k not in NOT_EXPERIMENT}, sort_keys=True, default=str
        )
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def group_label(group: list[Any]) -> str:
    names = [str(r.name) for r in group]
    if len(group) == 1:
        return names[0]
    prefix = os.path.commonprefix(names).rstrip("_-. ")
    if prefix.endswith("seed"):
        prefix = prefix[: -len("seed")].rstrip("_-. ")
    return f"{prefix or names[0]} (n={len(group)})"


def loss_curve(run: Any) -> dict[int, float]:
    """Global step ``(task - 1) * iterations + iteration`` -> logged training loss."""
    steps = [e for e in run.events if e.get("event") == "step"]
    iterations = run.config.get("train", {}).get("iterations") or max(
        (e["iteration"] for e in steps), default=0
    )
    return {(e["task"] - 1) * iterations + e["iteration"]: float(e["loss"]) for e in steps}


def accuracy_curve(run: Any) -> np.ndarray:
    """Mean accuracy over all tasks in each finished row of the matrix (row 0 = zero-shot)."""
    rows = run.matrix[~np.isnan(run.matrix).any(axis=1)]
    return rows.mean(axis=1)


def _fmt(mean: float, half: float) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{mean:.2f}" if not np.isfinite(half) else f"{mean:.2f} ± {half:.2f}"


def seed_table(groups: list[list[Any]]) -> list[str]:
    """Markdown rows: each group's metrics as mean ± 95% half-width (finished runs only)."""
    lines = [
        "| experiment | runs | seeds | Transfer | Average | Last | BWT |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        done = [r for r in group if r.metrics]
        cells = []
        for metric in METRICS:
            values = [r.metrics[metric] for r in done if r.metrics.get(metric) is not None]
            cells.append(_fmt(*mean_interval(values)) if values else "n/a")
        seeds = ", ".join(str(r.config.get("seed")) for r in group)
        lines.append(
            f"| {group_label(group)} | {len(done)}/{len(group)} | {seeds} | " + " | ".join(cells) + " |"
        )
    return lines


def paired_table(groups: list[list[Any]]) -> list[str]:
    """Markdown rows: for each two groups with per-item scores (``eval.item_scores``) on the same tasks,
    the paired bootstrap of each metric's difference over their common seeds (`rankwise.paired`);
    nothing when no two groups qualify."""
    from rankwise.paired import compare_by_seed, format_difference, load_item_scores

    scored = []
    for group in groups:
        runs = {}
        for run in group:
            if run.metrics and (run.path / "item_scores").is_dir():
                try:
                    runs[run.config.get("seed")] = load_item_scores(run.path)
                except RankwiseError:
                    continue  # a run with incomplete item scores takes no part
        if runs:
            scored.append((group_label(group), runs))
    lines = []
    for (name_a, a), (name_b, b) in itertools.combinations(scored, 2):
        same_tasks = {s: items for s, (tasks, items) in b.items() if s in a and a[s][0] == tasks}
        try:
            seeds, diffs = compare_by_seed({s: items for s, (_, items) in a.items()}, same_tasks)
        except RankwiseError:  # not the same items
            continue
        if seeds:  # LINEAR's order: transfer, average, last, bwt (the table's columns)
            lines.append(f"| {name_a} − {name_b} | {len(seeds)} | " + " | ".join(map(format_difference, diffs)) + " |")
    if not lines:
        return []
    return [
        "Paired differences (bootstrap over seeds and test items, 95% interval, two-sided p):",
        "",
        "| A − B | seeds | Transfer | Average | Last | BWT |",
        "|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def _band(ax, x, values: np.ndarray, label: str) -> None:
    mean, half = mean_interval(values)
    (line,) = ax.plot(x, mean, label=label)
    if values.shape[-1] > 1:
        ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.25, lw=0)


def plot_overlays(groups: list[list[Any]], out: Path, plt, save) -> list[Path]:
    """`overlay_loss.png` (when any run logged steps) and `overlay_accuracy.png`; returns the files."""
    written = []
    curves = [[loss_curve(r) for r in g] for g in groups]
    if any(c for group in curves for c in group):
        fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
        for group, group_curves in zip(groups, curves):
            steps = sorted(set.intersection(*(set(c) for c in group_curves)))
            if steps:
                _band(ax, steps, np.array([[c[s] for c in group_curves] for s in steps]), group_label(group))
        ax.set_xlabel("optimizer step (tasks in sequence)")
        ax.set_ylabel("training loss")
        ax.set_title("training loss (mean, 95% interval over seeds)")
        ax.legend(fontsize=7)
        written.append(save(fig, out / "overlay_loss.png"))
    fig, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    for group in groups:
        accs = [accuracy_curve(r) for r in group]
        done = min(len(a) for a in accs)
        _band(ax, np.arange(done), np.array([a[:done] for a in accs]).T, group_label(group))
    ax.set_xlabel("tasks learned (0 = zero-shot)")
    ax.set_ylabel("mean accuracy over all tasks")
    ax.set_title("accuracy after each task (mean, 95% interval over seeds)")
    ax.legend(fontsize=7)
    written.append(save(fig, out / "overlay_accuracy.png"))
    return written


def compare_section(runs: list[Any], out: Path, plt, save) -> tuple[list[Path], list[str]]:
    """The overlay plots and the markdown section comparing `runs` (seeds averaged per group)."""
    groups = group_runs(runs)
    written = plot_overlays(groups, out, plt, save)
    lines = [
        "## Runs compared",
        "",
        "Runs whose configs differ only in name, seed, device, threads or output are one experiment;",
        "its numbers are the mean ± the half-width of the 95% Student-t interval over its runs.",
        "",
        *seed_table(groups),
        "",
        *paired_table(groups),
    ]
    lines += [f"![{p.stem}]({p.name})" for p in written] + [""]
    return written, lines
