"""Per-task scores of predictions against targets, each in [0, 100].

`SCORERS[task.metric](predictions, targets)` is how the engine scores a task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rankwise.errors import DataError


def _check(predictions: Sequence[Any], targets: Sequence[Any]) -> None:
    if len(predictions) != len(targets):
        raise DataError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise DataError("cannot score an empty evaluation set")


def accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """Percentage of predictions equal to their target (label ids or strings)."""
    _check(predictions, targets)
    return 100.0 * sum(p == t for p, t in zip(predictions, targets)) / len(targets)


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Percentage of generated strings equal to the answer after stripping and lower-casing."""
    _check(predictions, targets)
    hits = sum(str(p).strip().lower() == str(t).strip().lower() for p, t in zip(predictions, targets))
    return 100.0 * hits / len(targets)


SCORERS: dict[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
}
