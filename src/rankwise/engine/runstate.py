"""A run's record while it runs: the accuracy rows and events so far, the files written from them, and
the commit that makes a point of the run resumable (a snapshot, then ``state/state.json``; see
checkpoint.py). Every rank holds one; only rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rankwise import io
from rankwise.config import RunConfig
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import distributed as ddp
from rankwise.engine.device import rng_state
from rankwise.engine.results import write_metrics
from rankwise.engine.rundir import inside
from rankwise.tasks import Task


class RunState:
    """The state of one run in this process: where it writes, what it has computed, how to commit it."""

    def __init__(
        self, config: RunConfig, run_dir: Path, quiet: bool, dist: ddp.DistContext = ddp.SINGLE
    ) -> None:
        self.config, self.run_dir, self.dist = config, run_dir, dist
        self.quiet = quiet or not dist.is_main  # one progress display: rank 0's
        self.state_dir = run_dir / "state"
        self.events: list[dict[str, Any]] = []
        self.rows: list[list[float]] = []
        self.snapshot_seq = 0
        self.lock = None  # rank 0's lock on the run directory, held until the run ends
        self.kept_optimizer: dict[str, Any] | None = None  # method.keep_optimizer: the last task's state
        self.tracker = None  # output.loggers (rankwise.tracking), opened at the first write

    def path(self, *parts: str) -> Path:
        """A path in the run directory, proven to resolve inside it (links followed)."""
        return inside(self.run_dir, self.run_dir.joinpath(*parts))

    def say(self, message: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(message)

    def write_results(self, tasks: list[Task], finished: bool = False) -> None:
        """Matrix, events and, once finished, metrics.json: all before the commit that says so."""
        if not self.dist.is_main:
            return
        names = [t.name for t in tasks]
        labels = ["zero-shot"] + [f"after {n}" for n in names[: len(self.rows) - 1]]
        io.write_json(
            self.path("accuracy_matrix.json"),
            {"tasks": names, "rows": labels, "matrix": self.rows, "metric": [t.metric for t in tasks]},
        )
        text = "row," + ",".join(names) + "\n"
        text += "".join(
            f"{lab}," + ",".join(f"{v:.4f}" for v in row) + "\n" for lab, row in zip(labels, self.rows)
        )
        io.write_text(self.path("accuracy_matrix.csv"), text)
        io.write_text(self.path("events.jsonl"), "".join(io.json.dumps(e) + "\n" for e in self.events))
        if self.config.output.loggers:
            from rankwise.tracking import Tracker

            self.tracker = self.tracker or Tracker(self.config.output.loggers, self.config.to_dict(), self.run_dir)
            self.tracker.log(self.events, names, finished)
        if finished:
            write_metrics(self.path("metrics.json"), self.config, names, self.rows)

    def commit(
        self, tasks, task_index: int, iteration: int, structured: dict[str, Any], finished=False
    ) -> None:
        """Snapshot, then atomically point state.json at it (the commit), then drop older snapshots.

        Every rank calls it (each rank's RNG state is gathered); only rank 0 writes.
        """
        states = ddp.gather_objects(rng_state(), self.dist)
        self.snapshot_seq += 1
        if not self.dist.is_main:
            return
        self.write_results(tasks, finished)
        name = f"snap_{self.snapshot_seq:06d}"
        (meta, rng_tensors), others = states[0], states[1:]
        extra = {f"rng_rank{r}": t for r, (_, t) in enumerate(others, start=1)}
        ckpt.save_snapshot(
            self.path("state", name),
            {"rng": meta, "rng_ranks": [m for m, _ in states]},
            {"rng": rng_tensors, **extra, **structured},
        )
        ckpt.write_state(
            self.state_dir,
            {
                "task_index": task_index,
                "iteration": iteration,
                "snapshot": name,
                "rows": self.rows,
                "snapshot_seq": self.snapshot_seq,
                "finished": finished,
                "num_events": len(self.events),
            },
        )
        ckpt.prune_snapshots(self.state_dir, name)

    def progress(self, total: int, desc: str, initial: int = 0):
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, desc=desc, disable=self.quiet, dynamic_ncols=True, leave=False
        )
