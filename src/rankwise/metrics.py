"""Continual-learning metrics computed from the accuracy matrix, and nothing else.

The engine records ``matrix`` of shape (T + 1, T): row 0 is the zero-shot row (every task evaluated
before any training), row i (1..T) holds the accuracies after training task i. Writing
``acc[i, j]`` for the T x T part (rows 1..T, i.e. ``matrix[1:]``), with i, j = 1..T:

* Transfer   = mean over j >= 2 of mean_{i < j} acc[i, j]   (strict upper triangle, column-wise:
  how well a task is solved before it is learned)
* Average    = mean of all T x T entries
* Last       = mean_j acc[T, j]
* BWT        = 1/(T-1) sum_{i<T} (acc[T, i] - acc[i, i])   (negative = forgetting; Lopez-Paz &
  Ranzato 2017, the standard definition)
* BWT_TRACE  = 1/T sum_{i<=T} min(acc[T, i] - acc[i, i], 0)   (TRACE's ``collect_results.py``: the last
  task's zero term is counted and gains are clipped to 0, so BWT_TRACE <= (T-1)/T * BWT, with
  equality iff no task ends above its just-learned score; compare with TRACE-paper numbers)
* Forgetting = 1/(T-1) sum_{i<T} (max_{l<T} acc[l, i] - acc[T, i])
* OP         = mean of the final row (TRACE's name for Last)

Metrics that need at least two tasks (Transfer, BWT, Forgetting) are ``None`` for T = 1;
BWT_TRACE is 0 there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rankwise.errors import ConfigError


def _trained(matrix: np.ndarray | Sequence[Sequence[float]], with_zero_shot: bool) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ConfigError("accuracy_matrix", m.shape, "a 2-D array")
    acc = m[1:] if with_zero_shot else m
    if acc.shape[0] != acc.shape[1] or acc.shape[0] == 0:
        rows = "T + 1 rows and T columns" if with_zero_shot else "T rows and T columns"
        raise ConfigError("accuracy_matrix", m.shape, f"{rows} with T >= 1")
    if not np.all(np.isfinite(acc)):
        raise ConfigError("accuracy_matrix", "non-finite entries", "finite accuracies (is the run finished?)")
    return acc


def transfer(acc: np.ndarray) -> float | None:
    """Mean over tasks j >= 2 of the mean accuracy on j after tasks 1..j-1 (strict upper triangle)."""
    t = acc.shape[0]
    if t < 2:
        return None
    return float(np.mean([acc[:j, j].mean() for j in range(1, t)]))


def average(acc: np.ndarray) -> float:
    """Mean of every entry of the T x T matrix."""
    return float(acc.mean())


def last(acc: np.ndarray) -> float:
    """Mean accuracy over all tasks after training the last one."""
    return float(acc[-1].mean())


def bwt(acc: np.ndarray) -> float | None:
    """Backward transfer: mean over earlier tasks of (final accuracy - accuracy right after learning it)."""
    t = acc.shape[0]
    if t < 2:
        return None
    return float(np.mean([acc[t - 1, i] - acc[i, i] for i in range(t - 1)]))


def bwt_trace(acc: np.ndarray) -> float:
    """TRACE's backward transfer: ``1/T sum_{i=1..T} min(acc[T, i] - acc[i, i], 0)`` (see the module)."""
    t = acc.shape[0]
    return float(np.mean([min(acc[t - 1, i] - acc[i, i], 0.0) for i in range(t)]))


def forgetting(acc: np.ndarray) -> float | None:
    """Mean over earlier tasks of (best accuracy before the last task - final accuracy)."""
    t = acc.shape[0]
    if t < 2:
        return None
    return float(np.mean([acc[: t - 1, i].max() - acc[t - 1, i] for i in range(t - 1)]))


def summarize(
    matrix: np.ndarray | Sequence[Sequence[float]], with_zero_shot: bool = True
) -> dict[str, float | None]:
    """All metrics of a finished run's accuracy matrix ((T+1) x T with the zero-shot row by default)."""
    acc = _trained(matrix, with_zero_shot)
    out: dict[str, float | None] = {
        "transfer": transfer(acc),
        "average": average(acc),
        "last": last(acc),
        "bwt": bwt(acc),
        "bwt_trace": bwt_trace(acc),
        "forgetting": forgetting(acc),
        "op": last(acc),
    }
    if with_zero_shot:
        out["zero_shot"] = float(np.asarray(matrix, dtype=np.float64)[0].mean())
    return out
