"""Paired comparison of two methods over the same seeds and the same test items (a paired bootstrap).

Transfer, Average, Last and BWT are linear in the accuracy matrix (rankwise.metrics): each is
``sum_{r,t} c[r, t] * acc[r, t]`` with coefficients ``c`` that depend only on the number of tasks
(`linear_coefficients` reads them off the metric functions themselves, on unit matrices). A cell is
the mean of its task's per-item scores (``eval.item_scores``), so for methods A and B run with the
same seed ``s`` on the same items,

    metric(A_s) - metric(B_s) = sum_t (1 / n_t) sum_i d[s, t, i],   d[s, t, i] = sum_r c[r, t] (A - B)[s, r, t, i]

Each bootstrap draw resamples the seeds (with replacement) and, independently per task, the test
items (with replacement; the same items for both methods, which is what makes it paired), and
averages the difference over the drawn seeds. Reported: the observed mean difference over seeds,
the 2.5 / 97.5 percentiles of the draws, and the two-sided p-value ``min(1, 2 min(P(draw <= 0),
P(draw >= 0)))`` (the share of draws on the far side of zero, doubled). With 3 seeds the seed
resampling is coarse; the interval then mostly reflects item noise and between-seed spread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankwise import metrics
from rankwise.errors import ConfigError, DataError

#: the metrics this test supports: linear in the matrix (Forgetting and BWT_TRACE take max / min)
LINEAR = {"transfer": metrics.transfer, "average": metrics.average, "last": metrics.last, "bwt": metrics.bwt}


def linear_coefficients(metric: str, n_tasks: int) -> np.ndarray:
    """``c`` of shape (T + 1, T) with ``metric(matrix) == (c * matrix).sum()`` (row 0, zero-shot, is 0)."""
    if metric not in LINEAR:
        raise ConfigError("metric", metric, f"one of {sorted(LINEAR)} (linear in the accuracy matrix)")
    coefficients = np.zeros((n_tasks + 1, n_tasks))
    for r in range(n_tasks):
        for t in range(n_tasks):
            unit = np.zeros((n_tasks, n_tasks))
            unit[r, t] = 1.0
            coefficients[r + 1, t] = LINEAR[metric](unit) or 0.0  # None (one task) -> no coefficient
    return coefficients


RunItems = list[np.ndarray]  # per task: (T + 1, n_t) per-item scores, rows in matrix order


def load_item_scores(run_dir: str | Path) -> tuple[list[str], RunItems]:
    """(task names, per-task (T + 1, n_t) arrays) from a finished run's ``item_scores/row_*.json``."""
    folder = Path(run_dir) / "item_scores"
    files = sorted(folder.glob("row_*.json"))
    if not files:
        raise DataError(f"{folder}: no per-item scores (run with eval.item_scores: true)")
    rows = [json.loads(f.read_text()) for f in files]
    tasks = rows[0]["tasks"]
    if [r["row"] for r in rows] != list(range(len(tasks) + 1)):
        raise DataError(f"{folder}: rows {[r['row'] for r in rows]}, expected 0..{len(tasks)} (is the run finished?)")
    out = []
    for name in tasks:
        scores = [r["items"][name] for r in rows]
        if any(s is None for s in scores):
            raise DataError(f"{folder}: task {name!r} has no per-item scores (its metric is not a mean over items)")
        out.append(np.asarray(scores, dtype=np.float64))
    return tasks, out


@dataclass
class PairedDifference:
    """metric(A) - metric(B), mean over seeds, with its bootstrap interval and p-value."""

    metric: str
    difference: float
    low: float
    high: float
    p_value: float
    n_seeds: int
    n_boot: int


def format_difference(d: PairedDifference) -> str:
    """``+1.2 [-0.3, +2.8] p=0.094``; a p-value of 0 (no draw on the far side of zero) is shown as the
    resolution of the test, ``p<2/n_boot``."""
    p = f"p<{2 / d.n_boot:.4f}" if d.p_value == 0 else f"p={d.p_value:.3f}"
    return f"{d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}] {p}"


def paired_bootstrap(
    runs_a: Sequence[RunItems],
    runs_b: Sequence[RunItems],
    metric: str,
    n_boot: int = 4000,
    seed: int = 0,
) -> PairedDifference:
    """Paired bootstrap of ``metric(A) - metric(B)``; ``runs_a[s]`` and ``runs_b[s]`` share seed s (module)."""
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ConfigError("runs", (len(runs_a), len(runs_b)), "the same number (>= 1) of seeds for both methods")
    n_tasks = len(runs_a[0])
    coefficients = linear_coefficients(metric, n_tasks)
    # d[t]: (seeds, n_t) per-item contributions of the difference
    d = []
    for t in range(n_tasks):
        shapes = {r[t].shape for r in (*runs_a, *runs_b)}
        if len(shapes) != 1 or next(iter(shapes))[0] != n_tasks + 1:
            raise DataError(f"task {t}: per-item score arrays differ in shape {sorted(shapes)}: not the same items")
        diff = np.stack([a[t] - b[t] for a, b in zip(runs_a, runs_b)])  # (seeds, T + 1, n_t)
        d.append(np.einsum("r,sri->si", coefficients[:, t], diff))
    observed_per_seed = sum(dt.mean(axis=1) for dt in d)  # (seeds,)
    rng = np.random.default_rng(seed)
    n_seeds = len(runs_a)
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    per_seed = np.zeros((n_boot, n_seeds))  # the bootstrap difference of every seed, per draw
    for dt in d:
        n = dt.shape[1]
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)  # (n_boot, n_t) item resample
        per_seed += counts @ dt.T / n  # (n_boot, seeds)
    draws = np.take_along_axis(per_seed, seed_draws, axis=1).mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    p = min(1.0, 2.0 * min(float((draws <= 0).mean()), float((draws >= 0).mean())))
    return PairedDifference(metric, float(observed_per_seed.mean()), float(low), float(high), p, n_seeds, n_boot)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given).

    Sorted ascending, the i-th smallest (i = 0, 1, ...) of m is multiplied by m - i, the running maximum
    keeps the adjusted values in the order of the raw ones, and they are capped at 1. Rejecting where
    the adjusted value is below alpha keeps the family-wise error rate at alpha under any dependence
    between the tests (Holm 1979), which the comparisons of one stream have: they share runs.
    """
    values = [float(p) for p in p_values]
    for p in values:
        if not 0.0 <= p <= 1.0:
            raise ConfigError("p_values", p, "p-values in [0, 1]")
    m = len(values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=values.__getitem__)):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


def compare_by_seed(
    a: dict[object, RunItems], b: dict[object, RunItems], n_boot: int = 4000
) -> tuple[list[object], list[PairedDifference]]:
    """Two methods' per-item scores keyed by seed: their common seeds (in `a`'s order) and the paired
    bootstrap of every metric of `LINEAR` over them (no differences when they share no seed)."""
    seeds = [s for s in a if s in b]
    if not seeds:
        return [], []
    runs_a, runs_b = [a[s] for s in seeds], [b[s] for s in seeds]
    return seeds, [paired_bootstrap(runs_a, runs_b, metric, n_boot) for metric in LINEAR]
