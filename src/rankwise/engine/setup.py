"""Setting a run up: the run directory prepared on rank 0, the point to resume from, RNG restores and
each task's own train settings. The loop itself is continual.py.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch
import yaml

from rankwise import io
from rankwise.config import TrainConfig
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import distributed as ddp
from rankwise.engine.build import Parts, attach_method, checkpoint_dir
from rankwise.engine.device import derived_seed, seed_everything, set_rng_state
from rankwise.engine.rundir import open_run_dir, tasks_record
from rankwise.engine.runstate import RunState
from rankwise.errors import CheckpointError, ConfigError, RankwiseError
from rankwise.tasks import Task


def prepare_on_rank0(
    run: RunState, parts: Parts, resolved: dict[str, Any], resume: bool, overwrite: bool
) -> dict[str, Any] | None:
    """Rank 0 applies the run-dir rules and writes config.yaml / tasks.json; every rank gets the outcome."""
    outcome: tuple[str, Any] | None = None
    if run.dist.is_main:
        try:
            # taking over a stale lock is said even with --quiet: someone's run died there
            state, run.lock = open_run_dir(run.run_dir, resolved, resume, overwrite, run.say, warn=warn)
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


def warn(message: str) -> None:
    print(f"rankwise: {message}", file=sys.stderr)


def resume_from(run: RunState, parts: Parts, state: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """Load the committed `state` into `run` and `parts` (model from the last finished task's checkpoint,
    RNG states from the snapshot); return (task index, iteration, snapshot tensors) to continue from."""
    run_dir, tasks = run.run_dir, parts.tasks
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
    attach_method(parts, run.config, restore)
    restore_rng(run, structured)
    ddp.barrier(parts.dist)  # every rank has read the state before rank 0 may write again
    run.say(f"resuming {run_dir} at task {start_task + 1}/{len(tasks)}, iteration {start_iter}")
    return start_task, start_iter, structured


def restore_rng(run: RunState, structured: dict[str, Any]) -> None:
    """Restore this rank's RNG state from a snapshot (a rank the snapshot lacks gets a derived seed)."""
    rank = run.dist.rank
    metas = structured.get("rng_ranks_meta")
    if rank == 0:
        set_rng_state(structured["rng_meta"], structured["rng"])
    elif metas is not None and rank < len(metas) and f"rng_rank{rank}" in structured:
        set_rng_state(metas[rank], structured[f"rng_rank{rank}"])
    else:  # resumed with more processes than the run was saved with
        seed_everything(derived_seed("rank", run.config.seed, rank, run.snapshot_seq))


def task_train_config(train: TrainConfig, task: Task) -> TrainConfig:
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


def optimizer_snapshot(params: dict[str, Any], optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """What a mid-task commit stores to resume the task: its trainable tensors, optimizer and schedule,
    as full tensors (under FSDP each rank gathers its shards: a collective on every rank)."""
    from rankwise.engine.fsdp import full_tensors

    return {
        "params": full_tensors({n: p.detach() for n, p in params.items()}),
        "optimizer": full_tensors(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
    }


def restore_snapshot_tensors(params: dict[str, Any], saved: dict) -> None:
    """Put a mid-task snapshot's trainable tensors back (before the task's parameters are sharded)."""
    if set(saved.get("params", {})) != set(params):
        raise CheckpointError("the snapshot's trainable tensors do not match this model's; cannot resume")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved["params"][name])


def restore_snapshot_state(run: RunState, optimizer: Any, scheduler: Any, saved: dict) -> None:
    """Put a mid-task snapshot's optimizer, schedule and RNG states back (the rest of the inverse of
    `optimizer_snapshot`; the optimizer state is scattered onto sharded parameters under FSDP)."""
    from rankwise.engine.fsdp import shard_optimizer_state

    optimizer.load_state_dict(shard_optimizer_state(saved["optimizer"], optimizer))
    scheduler.load_state_dict(saved["scheduler"])
    restore_rng(run, saved)  # begin_task drew from the RNGs: rewind them

