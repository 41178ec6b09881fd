"""What a run produced: the result object, and metrics.json written from (or read back with) the
accuracy matrix. The run-directory rules live in rundir.py, the loop in continual.py; both use this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankwise import io
from rankwise.config import RunConfig
from rankwise.errors import CheckpointError
from rankwise.metrics import summarize


@dataclass
class RunResult:
    """What a finished run produced (also on disk in `run_dir`)."""

    accuracy_matrix: np.ndarray  # (T + 1, T); row 0 = zero-shot
    metrics: dict[str, Any]
    run_dir: Path
    task_names: list[str] = field(default_factory=list)
    already_finished: bool = False  # a --resume of a run that had finished: nothing was run


def write_metrics(path: Path, config: RunConfig, task_names: list[str], rows: list[list[float]]) -> dict:
    """metrics.json of a finished run: Transfer, Average, Last, BWT, ... of its accuracy matrix."""
    metrics = summarize(np.asarray(rows, dtype=np.float64))
    io.write_json(path, {"method": config.method.name, "name": config.name, "tasks": task_names, **metrics})
    return metrics


def ensure_metrics(path: Path, config: RunConfig, task_names: list[str], rows: list, say: Callable[[str], None]) -> None:
    """Recompute a finished run's metrics.json from the committed rows if it is missing or damaged."""
    try:
        io.read_json(path)
        return
    except CheckpointError:
        pass
    write_metrics(path, config, task_names, rows)
    say(f"{path} was missing or damaged: recomputed from the committed accuracy matrix")


def load_result(run_dir: str | Path) -> RunResult:
    """Read a finished run's accuracy matrix and metrics back from disk."""
    run_dir = Path(run_dir)
    data = io.read_json(run_dir / "accuracy_matrix.json")
    metrics = io.read_json(run_dir / "metrics.json")
    return RunResult(np.asarray(data["matrix"], dtype=np.float64), metrics, run_dir, list(data["tasks"]))
