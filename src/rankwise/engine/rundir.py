"""The run directory's rules: refuse to clobber, overwrite by moving aside, resume only the same config."""

from __future__ import annotations

import difflib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rankwise import io
from rankwise.config import RunConfig, config_from_dict
from rankwise.engine import checkpoint as ckpt
from rankwise.errors import CheckpointError, ConfigError, RankwiseError


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> str:
    def lines(d: dict[str, Any]) -> list[str]:
        # where the run lives and how many threads it uses do not change what it computes
        d = {k: v for k, v in d.items() if k not in ("output", "threads")}
        return yaml.safe_dump(d, sort_keys=True).splitlines()

    return "\n".join(
        difflib.unified_diff(lines(saved), lines(current), "saved config.yaml", "this config", lineterm="")
    )


def prepare_run_dir(
    run_dir: Path, resolved: dict[str, Any], resume: bool, overwrite: bool, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """Apply the refuse/overwrite/resume rules; return the saved state when resuming."""
    state = ckpt.read_state(run_dir / "state") if (run_dir / "state").is_dir() else None
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(
                f"nothing to resume in {run_dir}: no config.yaml (start it without --resume)"
            )
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        diff = _config_diff(saved, resolved)
        if diff:
            raise ConfigError(
                "config",
                str(run_dir / "config.yaml"),
                f"the same config as the run being resumed; differences:\n{diff}",
            )
        if state is None:
            say(f"{run_dir} stopped before its first commit; starting it from the beginning")
        return state
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            what = (
                "a finished run"
                if state and state.get("finished")
                else "an unfinished run (continue it with --resume)"
                if state
                else "a run stopped before its first commit (restart it with --resume)"
                if (run_dir / "config.yaml").is_file()
                else "files that are not a rankwise run"
            )
            raise ConfigError(
                "output.dir",
                str(run_dir),
                f"an empty or new directory: it holds {what}; pass --overwrite to replace it "
                "(the old one is moved aside, not deleted)",
            )
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(run_dir), str(backup))
        say(f"overwrite: moved the previous contents of {run_dir} to {backup}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def load_result(run_dir: str | Path):
    """Read a finished run's accuracy matrix and metrics back from disk."""
    run_dir = Path(run_dir)
    data = io.read_json(run_dir / "accuracy_matrix.json")
    metrics = io.read_json(run_dir / "metrics.json")
    from rankwise.engine.continual import RunResult

    return RunResult(np.asarray(data["matrix"], dtype=np.float64), metrics, run_dir, list(data["tasks"]))


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RankwiseError(f"{run_dir} is not a rankwise run directory (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def tasks_record(tasks: list[Any]) -> dict[str, Any]:
    """What ``tasks.json`` records about each task: sizes, label space and the scenario's provenance.

    ``info`` is the scenario's ``task.info`` (split convention, shots, split seed, source folder, ...),
    so a run directory says which data it was trained and scored on.
    """
    return {
        "version": 1,
        "tasks": [
            {
                "index": i + 1,
                "name": t.name,
                "metric": t.metric,
                "num_train": len(t.train),
                "num_test": len(t.test),
                "num_classes": None if t.class_names is None else len(t.class_names),
                "num_eval_classes": None if t.eval_class_names is None else len(t.eval_class_names),
                "label_offset": t.label_offset,
                "num_templates": None if t.templates is None else len(t.templates),
                "info": _jsonable(t.info),
            }
            for i, t in enumerate(tasks)
        ],
    }


def _jsonable(obj: Any) -> Any:
    """Plain JSON data: paths and other objects become strings, tuples lists, numpy scalars numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
