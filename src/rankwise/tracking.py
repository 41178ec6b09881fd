"""Experiment trackers fed from the run's event stream: CSV, TensorBoard, Weights & Biases, MLflow.

Chosen in the config, e.g. ``output: {loggers: [csv, tensorboard]}``. Each logger reads the same
events the engine writes to ``events.jsonl`` and writes under ``RUN_DIR/logs/``:

===========  ===================================  =============================================
logger       files                                package (extra)
===========  ===================================  =============================================
csv          logs/metrics.csv                     none
tensorboard  logs/tensorboard/events.out.tfevents tensorboard (``rankwise[tensorboard]``)
wandb        logs/wandb/ (offline run files)      wandb (``rankwise[wandb]``); offline unless
                                                  ``WANDB_MODE`` says otherwise
mlflow       logs/mlruns/ (file store)            mlflow-skinny (``rankwise[mlflow]``); another
                                                  store through ``MLFLOW_TRACKING_URI``
===========  ===================================  =============================================

Every event becomes one point ``(step, {tag: value})`` on a single step axis, tasks one after
another (``N`` = ``train.iterations``):

* ``step`` event of task ``t`` at iteration ``i``: step ``(t - 1) N + i``; tags ``train/loss``,
  ``train/lr``, ``train/grad_norm``, ``train/examples_per_s`` and any other number the step carries
  (CoDyRA's ``train/k``);
* evaluation after task ``t`` (``t = 0``: zero-shot): step ``t N``; tags ``eval/<task name>`` (accuracy
  of each task), ``eval/average`` (mean of the row) and ``eval/seen`` (mean over tasks ``1..t``).

Delivery follows the engine's commits: the tracker is called when events are written and sends
only events it has not sent (a cursor in ``logs/tracking.json``), so ``--resume`` continues the same
curves (and the same W&B / MLflow run) instead of repeating them. The CSV file is rewritten from all
events each time, like ``events.jsonl``.
"""

from __future__ import annotations

import csv
import importlib.util
import io as _stringio
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankwise import io
from rankwise.config_types import dotted_items
from rankwise.errors import ConfigError, choices

#: logger name -> (module that must be importable, pip extra that installs it)
LOGGERS: dict[str, tuple[str | None, str | None]] = {
    "csv": (None, None),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}
Point = tuple[int, str, dict[str, float]]  # (step, event kind, {tag: value})


def check_loggers(names: Sequence[str], field: str = "output.loggers") -> None:
    """Known, distinct names whose packages are installed; else a one-line `ConfigError`."""
    for index, name in enumerate(names):
        where = f"{field}[{index}]"
        if name not in LOGGERS:
            raise ConfigError(where, name, choices(LOGGERS))
        if list(names).index(name) != index:
            raise ConfigError(where, name, "each logger once")
        module, extra = LOGGERS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(
                where,
                name,
                f"an installed logger: package {module!r} is missing (pip install 'rankwise[{extra}]')",
            )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def event_points(events: Sequence[dict[str, Any]], task_names: Sequence[str], iterations: int) -> list[Point]:
    """The points of `events` (see the module docstring for steps and tags); other events give none."""
    points: list[Point] = []
    for event in events:
        kind = event.get("event")
        if kind == "step":
            step = (int(event["task"]) - 1) * iterations + int(event["iteration"])
            skip = ("event", "task", "task_name", "iteration")
            values = {f"train/{k}": _number(v) for k, v in event.items() if k not in skip}
            points.append((step, kind, {k: v for k, v in values.items() if v is not None}))
        elif kind in ("evaluation", "task_end"):
            done = 0 if kind == "evaluation" else int(event["task"])
            row = [float(v) for v in event["row"]]
            values = {f"eval/{name}": v for name, v in zip(task_names, row)}
            values["eval/average"] = sum(row) / len(row)
            if done > 0:
                values["eval/seen"] = sum(row[:done]) / done
            points.append((done * iterations, "evaluation", values))
    return points


class CSVLogger:
    """``logs/metrics.csv``: one row per point, columns ``step,event`` then every tag (first seen first)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "metrics.csv"

    def write(self, new: list[Point], everything: list[Point]) -> None:
        tags: dict[str, None] = {}
        for _, _, values in everything:
            tags.update(dict.fromkeys(values))
        buffer = _stringio.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "event", *tags])
        for step, kind, values in everything:
            writer.writerow([step, kind, *(repr(values[t]) if t in values else "" for t in tags)])
        io.write_text(self.path, buffer.getvalue())

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """``logs/tensorboard``: scalars through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def write(self, new: list[Point], everything: list[Point]) -> None:
        for step, _, values in new:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """``logs/wandb``: a W&B run, offline unless ``WANDB_MODE`` is set (``wandb sync`` uploads it later)."""

    def __init__(self, folder: Path, config: dict[str, Any], state: dict[str, Any]) -> None:
        import wandb

        (folder / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rankwise"),
            name=config["name"],
            id=state.get("wandb_id"),
            resume="allow",
            dir=str(folder),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        state["wandb_id"] = self.run.id

    def write(self, new: list[Point], everything: list[Point]) -> None:
        for step, _, values in new:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """``logs/mlruns``: an MLflow run in a local file store (or ``MLFLOW_TRACKING_URI``), config as params."""

    def __init__(self, folder: Path, config: dict[str, Any], state: dict[str, Any]) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (folder / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # mlflow >= 3.7 refuses the file store unless asked for it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = state.get("mlflow_run_id")
        if self.run_id is None:
            found = self.client.get_experiment_by_name(config["name"])
            experiment = found.experiment_id if found else self.client.create_experiment(config["name"])
            self.run_id = self.client.create_run(experiment, run_name=config["name"]).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in dotted_items(config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[start : start + 100])
            state["mlflow_run_id"] = self.run_id

    def write(self, new: list[Point], everything: list[Point]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for step, _, values in new for tag, value in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


class Tracker:
    """The chosen loggers of one run; `log` sends them the events they have not had yet."""

    def __init__(self, names: Sequence[str], config: dict[str, Any], run_dir: Path) -> None:
        check_loggers(names)
        self.folder = Path(run_dir) / "logs"
        with io.storage_errors(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        self.state_path = self.folder / "tracking.json"
        self.state: dict[str, Any] = io.read_json(self.state_path) if self.state_path.is_file() else {}
        self.state.setdefault("delivered", 0)
        self.iterations = int(config["train"]["iterations"])
        builders = {
            "csv": lambda: CSVLogger(self.folder),
            "tensorboard": lambda: TensorBoardLogger(self.folder),
            "wandb": lambda: WandbLogger(self.folder, config, self.state),
            "mlflow": lambda: MLflowLogger(self.folder, config, self.state),
        }
        self.loggers = [builders[name]() for name in names]
        self.closed = False

    def log(
        self, events: Sequence[dict[str, Any]], task_names: Sequence[str], finished: bool = False
    ) -> None:
        """Send ``events[delivered:]`` (all of them to the CSV file); close the loggers when `finished`."""
        if self.closed:
            return
        delivered = int(self.state["delivered"])
        everything = event_points(events, task_names, self.iterations)
        new = event_points(events[delivered:], task_names, self.iterations) if len(events) > delivered else []
        for logger in self.loggers:
            logger.write(new, everything)
        self.state["delivered"] = max(delivered, len(events))
        io.write_json(self.state_path, self.state)
        if finished:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for logger in self.loggers:
                logger.close()
