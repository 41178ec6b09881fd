"""The continual-learning loop: zero-shot row, then for each task train -> end_task -> evaluate all.

    seed -> scenario tasks -> backbone -> adapters (get_model) -> evaluate all tasks (row 0)
    for task i:  begin_task -> train N steps -> end_task -> save checkpoint -> evaluate all (row i)

The run directory is the only output; `state/state.json` is its commit record (see checkpoint.py).
With ``resume=True`` the loop restarts from the last commit: the model is rebuilt from the last
finished task's checkpoint, the current task's trainable tensors, optimizer, scheduler and RNG
states come from the latest snapshot, and the data order is regenerated from (seed, task), so the
accuracy matrix equals that of an uninterrupted run.

Under torchrun / ``accelerate launch`` the same loop runs in every process (distributed.py): data
and evaluation are sharded, gradients averaged, and only rank 0 writes the run directory.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rankwise import io
from rankwise.config import ADAPTER_METHODS, RunConfig, TrainConfig
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import distributed as ddp
from rankwise.engine.build import (  # noqa: F401  (build_parts, save_task_checkpoint: public API)
    Parts,
    attach_method,
    build_base,
    build_parts,
    checkpoint_dir,
    save_task_checkpoint,
)
from rankwise.engine.device import derived_seed, rng_state, seed_everything, set_rng_state
from rankwise.engine.evaluate import evaluate_all
from rankwise.engine.rundir import (
    check_output_dir,
    check_run_name,
    ensure_metrics,
    inside,
    load_result,
    load_run_config,
    open_run_dir,
    tasks_record,
    write_metrics,
)
from rankwise.engine.trainer import (
    NonFiniteLossError,
    StepLog,
    carry_optimizer_state,
    make_optimizer,
    make_scheduler,
    train_task,
)
from rankwise.errors import CheckpointError, ConfigError, RankwiseError, StorageError
from rankwise.metrics import summarize
from rankwise.tasks import Task


@dataclass
class RunResult:
    """What a finished run produced (also on disk in `run_dir`)."""

    accuracy_matrix: np.ndarray  # (T + 1, T); row 0 = zero-shot
    metrics: dict[str, Any]
    run_dir: Path
    task_names: list[str] = field(default_factory=list)
    already_finished: bool = False  # a --resume of a run that had finished: nothing was run


# -- the loop --------------------------------------------------------------------------------------
class _Run:
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


def run_experiment(
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Run (or resume) the continual-learning experiment described by `config`; see module docstring.

    Only one process may use a run directory at a time (see runlock.py). Resuming a finished run runs
    nothing and returns its result with ``already_finished=True``.
    """
    if run_dir is None and not config.output.dir:
        check_run_name(config.name)  # it becomes runs/<name>
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
    check_output_dir(run_dir, "--resume" if resume else "output.dir")
    config.output.dir = str(run_dir)
    # build + validate everything before touching the run directory (a resume restores later)
    parts = build_base(config)
    dist = parts.dist
    run = _Run(config, run_dir, quiet, dist)
    if not resume:
        attach_method(parts, config)
    resolved = config.to_dict()
    state = _prepare_on_rank0(run, parts, resolved, resume, overwrite)
    try:
        return _continue(run, parts, state, resume)
    except StorageError as exc:
        if (run_dir / "state" / "state.json").is_file():
            raise StorageError(
                f"{exc}; the last committed state in {run_dir} is intact: continue with --resume {run_dir}"
            ) from exc
        raise
    finally:
        if run.lock is not None:
            run.lock.release()


def _continue(run: _Run, parts: Parts, state: dict[str, Any] | None, resume: bool) -> RunResult:
    """The loop from the saved `state` (None: from the start) to the end."""
    config, run_dir, dist, tasks = run.config, run.run_dir, parts.dist, parts.tasks
    if state is not None and state.get("finished"):
        if dist.is_main:  # a kill between the final commit and metrics.json (older runs)
            ensure_metrics(run.path("metrics.json"), config, [t.name for t in tasks], state["rows"], run.say)
        ddp.barrier(dist)
        result = load_result(run_dir)
        result.already_finished = True
        return result
    start_task, start_iter, structured = 0, 0, {}
    if state is not None:
        run.rows = [list(r) for r in state["rows"]]
        run.snapshot_seq = int(state["snapshot_seq"])
        run.events = io.read_jsonl(run.path("events.jsonl"), int(state["num_events"]))
        start_task, start_iter = int(state["task_index"]), int(state["iteration"])
        if not 0 <= start_task <= len(tasks):
            raise CheckpointError(f"{run_dir / 'state' / 'state.json'}: task_index {start_task} is outside 0..{len(tasks)}")
        meta, structured = ckpt.load_snapshot(run.path("state", state["snapshot"]))
        structured["rng_meta"] = meta["rng"]
        structured["rng_ranks_meta"] = meta.get("rng_ranks")
        run.kept_optimizer = structured.get("kept_optimizer")
        restore = checkpoint_dir(run_dir, start_task - 1, tasks[start_task - 1]) if start_task > 0 else None
        attach_method(parts, config, restore)
        _restore_rng(run, structured)
        ddp.barrier(dist)  # every rank has read the state before rank 0 may write again
        run.say(f"resuming {run_dir} at task {start_task + 1}/{len(tasks)}, iteration {start_iter}")
    else:
        if resume:  # stopped before its first commit: start from the beginning
            attach_method(parts, config)
        if dist.rank > 0:  # own dropout stream per rank; rank 0 keeps the one-process stream
            seed_everything(derived_seed("rank", config.seed, dist.rank))
        run.rows = [_evaluate(run, parts, tasks, "zero-shot")]
        run.events.append({"event": "evaluation", "after": "zero-shot", "row": run.rows[0]})
        if config.method.name == "zero-shot":
            run.rows += [list(run.rows[0]) for _ in tasks]
            run.commit(tasks, len(tasks), 0, {}, finished=True)
            return _finish(run, tasks)
        run.commit(tasks, 0, 0, {})
    for index in range(start_task, len(tasks)):
        _run_task(
            run,
            parts,
            tasks,
            index,
            start_iter if index == start_task else 0,
            structured if index == start_task else {},
        )
    return _finish(run, tasks)


def _prepare_on_rank0(
    run: _Run, parts: Parts, resolved: dict[str, Any], resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Rank 0 applies the run-dir rules and writes config.yaml / tasks.json; every rank gets the outcome."""
    outcome: tuple[str, Any] | None = None
    if run.dist.is_main:
        try:
            # taking over a stale lock is said even with --quiet: someone's run died there
            state, run.lock = open_run_dir(run.run_dir, resolved, resume, overwrite, run.say, warn=_warn)
            if state is None:
                io.write_text(run.path("config.yaml"), yaml.safe_dump(resolved, sort_keys=False))
                io.write_json(run.path("tasks.json"), tasks_record(parts.tasks))
            outcome = ("ok", state)
        except Exception as exc:
            if run.lock is not None:
                run.lock.release()
            if not run.dist.enabled:
                raise
            ddp.broadcast_object(("error", f"{type(exc).__name__}: {exc}"), run.dist)
            raise
    outcome = ddp.broadcast_object(outcome, run.dist)
    if outcome[0] == "error":
        raise RankwiseError(f"rank 0 could not prepare {run.run_dir}: {outcome[1]}")
    return outcome[1]


def _warn(message: str) -> None:
    print(f"rankwise: {message}", file=sys.stderr)


def _restore_rng(run: _Run, structured: dict[str, Any]) -> None:
    """Restore this rank's RNG state from a snapshot (a rank the snapshot lacks gets a derived seed)."""
    rank = run.dist.rank
    metas = structured.get("rng_ranks_meta")
    if rank == 0:
        set_rng_state(structured["rng_meta"], structured["rng"])
    elif metas is not None and rank < len(metas) and f"rng_rank{rank}" in structured:
        set_rng_state(metas[rank], structured[f"rng_rank{rank}"])
    else:  # resumed with more processes than the run was saved with
        seed_everything(derived_seed("rank", run.config.seed, rank, run.snapshot_seq))


def _evaluate(run: _Run, parts: Parts, tasks: list[Task], label: str) -> list[float]:
    bar = run.progress(len(tasks), f"eval {label}")
    row = evaluate_all(
        parts.backbone, tasks, run.config.eval.batch_size, lambda name: bar.update(1), parts.dist
    )
    bar.close()
    run.say(f"{label}: " + "  ".join(f"{t.name} {v:.1f}" for t, v in zip(tasks, row)))
    return row


def _trainable(parts: Parts, method: str) -> dict[str, torch.nn.Parameter]:
    if method == "full":
        for p in parts.model.parameters():
            p.requires_grad_(True)
        return dict(parts.model.named_parameters())
    wanted = {id(p) for p in parts.model.trainable_parameters()}
    return {n: p for n, p in parts.model.named_parameters() if id(p) in wanted}


def _task_train_config(train: TrainConfig, task: Task) -> TrainConfig:
    """The train settings for one task: a scenario that counts epochs (TRACE's official runner) sets the
    task's own step count in ``task.info["iterations"]``; every other task uses ``train.iterations``."""
    steps = task.info.get("iterations") if isinstance(task.info, dict) else None
    if steps is None or int(steps) == train.iterations:
        return train
    if not train.warmup_iterations < int(steps):
        raise ConfigError(
            "train.warmup_iterations", train.warmup_iterations, f"fewer than task {task.name!r}'s {int(steps)} steps"
        )
    return dataclasses.replace(train, iterations=int(steps))


def _run_task(run: _Run, parts: Parts, tasks: list[Task], index: int, start_iter: int, saved: dict) -> None:
    cfg, method, task = _task_train_config(run.config.train, tasks[index]), run.config.method.name, tasks[index]
    if method in ADAPTER_METHODS:
        parts.model.begin_task(task.name)
    params = _trainable(parts, method)
    ddp.broadcast_parameters(params.values(), parts.dist)  # same starting point on every rank
    optimizer = make_optimizer(list(params.values()), cfg)
    scheduler = make_scheduler(optimizer, cfg)
    keep = method in ADAPTER_METHODS and bool(getattr(parts.model.config, "keep_optimizer", False))
    if keep and start_iter == 0 and run.kept_optimizer is not None:
        carry_optimizer_state(optimizer, run.kept_optimizer)  # one optimizer for the run (official TRACE)
    if start_iter > 0:
        if set(saved.get("params", {})) != set(params):
            raise CheckpointError("the snapshot's trainable tensors do not match this model's; cannot resume")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved["params"][name])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _restore_rng(run, saved)  # begin_task drew from the RNGs: rewind them
    after = parts.model.after_optimizer_step if method in ADAPTER_METHODS else None
    bar = run.progress(cfg.iterations, f"task {index + 1}/{len(tasks)} {task.name}", initial=start_iter)
    last_good = [start_iter]

    def on_step(log: StepLog) -> None:
        bar.update(1)
        if log.iteration % cfg.log_every == 0 or log.iteration == cfg.iterations:
            bar.set_postfix(loss=f"{log.loss:.4f}", lr=f"{log.lr:.2e}")
            run.events.append(
                {
                    "event": "step",
                    "task": index + 1,
                    "task_name": task.name,
                    "iteration": log.iteration,
                    "loss": log.loss,
                    "lr": log.lr,
                    "examples_per_s": round(log.examples_per_s, 2),
                    "grad_norm": log.grad_norm,
                    **log.extra,  # CoDyRA: the prox threshold k of this step (None while dense)
                }
            )
        if log.iteration % cfg.checkpoint_every == 0 and log.iteration < cfg.iterations:
            run.commit(
                tasks,
                index,
                log.iteration,
                {
                    "params": {n: p.detach() for n, p in params.items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                },
            )
            last_good[0] = log.iteration

    try:
        train_task(
            backbone=parts.backbone,
            model=parts.model,
            task=task,
            task_index=index,
            cfg=cfg,
            seed=run.config.seed,
            optimizer=optimizer,
            scheduler=scheduler,
            start_iteration=start_iter,
            after_step=after,
            on_step=on_step,
            device=parts.device,
            dist=parts.dist,
        )
    except NonFiniteLossError as exc:
        bar.close()
        run.write_results(tasks)
        raise NonFiniteLossError(
            f"{exc}. The last good state (task {index + 1}, iteration {last_good[0]}) and the checkpoints of "
            f"finished tasks are kept in {run.run_dir}"
        ) from None
    bar.close()
    if keep:
        run.kept_optimizer = optimizer.state_dict()
    report: list[dict[str, Any]] | None = None
    if method in ADAPTER_METHODS:
        parts.model.end_task()
        # MoRAM fresh_atoms='end_task' draws the next task's atoms now: rank 0's on every rank
        ddp.broadcast_parameters(parts.model.trainable_parameters(), parts.dist)
    ddp.check_in_sync(parts.model, parts.dist, f"after task {index + 1} ({task.name!r})")
    if parts.dist.is_main:
        save_task_checkpoint(checkpoint_dir(run.run_dir, index, task), method, parts.model)
    if method in ADAPTER_METHODS:
        with parts.model.track_activations():
            row = _evaluate(run, parts, tasks, f"after {task.name}")
            ddp.reduce_activation_stats(parts.model, parts.dist)
        report = parts.model.rank_report()
    else:
        row = _evaluate(run, parts, tasks, f"after {task.name}")
    run.rows.append(row)
    run.events.append(
        {
            "event": "task_end",
            "task": index + 1,
            "task_name": task.name,
            "method": method,
            "row": row,
            "rank_report": report,
        }
    )
    carried = {"kept_optimizer": run.kept_optimizer} if keep else {}
    run.commit(tasks, index + 1, 0, carried, finished=index + 1 == len(tasks))


def _finish(run: _Run, tasks: list[Task]) -> RunResult:
    """The result of a run whose final commit (with metrics.json) is written."""
    matrix = np.asarray(run.rows, dtype=np.float64)
    return RunResult(matrix, summarize(matrix), run.run_dir, [t.name for t in tasks])


def evaluate_run(
    run_dir: str | Path,
    task_names: list[str] | None = None,
    quiet: bool = True,
    inference_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Re-evaluate the latest task checkpoint of a saved run on the chosen tasks (default: all).

    `inference_options` (MoRAM: top_k / tau / delta) go to `RankwiseModel.set_inference_options`.
    """
    from rankwise.errors import choices

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    state = ckpt.read_state(inside(run_dir, run_dir / "state"))
    done = 0 if state is None else len(state["rows"]) - 1
    parts = build_base(config)
    names = [t.name for t in parts.tasks]
    for name in task_names or []:
        if name not in names:
            raise ConfigError("--tasks", name, choices(names))
    restore = None
    if config.method.name != "zero-shot" and done > 0:
        restore = checkpoint_dir(run_dir, done - 1, parts.tasks[done - 1])
    attach_method(parts, config, restore)
    if inference_options:
        if config.method.name not in ADAPTER_METHODS:
            raise ConfigError(
                "--set", inference_options, f"MoRAM inference options; this run is {config.method.name!r}"
            )
        parts.model.set_inference_options(**inference_options)
    chosen = [t for t in parts.tasks if not task_names or t.name in task_names]
    run = _Run(config, run_dir, quiet, parts.dist)
    return dict(zip([t.name for t in chosen], _evaluate(run, parts, chosen, "checkpoint")))
