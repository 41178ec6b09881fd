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

What differs between zero-shot, full fine-tuning and an adapter method is the run kind's strategy
(strategy.py, chosen once in build.py); set-up and resume are setup.py, the run's record runstate.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankwise import io
from rankwise.config import RunConfig, TrainConfig
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
from rankwise.engine.compiled import compile_model
from rankwise.engine.device import derived_seed, seed_everything
from rankwise.engine.evaluate import evaluate_all
from rankwise.engine.fsdp import TaskFSDP, full_tensors, shard_optimizer_state
from rankwise.engine.results import RunResult, ensure_metrics, load_result
from rankwise.engine.rundir import check_output_dir, check_run_name, inside, load_run_config
from rankwise.engine.runstate import RunState
from rankwise.engine.setup import (
    optimizer_snapshot,
    prepare_on_rank0,
    restore_snapshot_state,
    restore_snapshot_tensors,
    resume_from,
    task_train_config,
)
from rankwise.engine.trainer import (
    NonFiniteLossError,
    StepLog,
    carry_optimizer_state,
    make_optimizer,
    make_scheduler,
    train_task,
)
from rankwise.errors import ConfigError, StorageError
from rankwise.metrics import summarize
from rankwise.tasks import Task

__all__ = ["RunResult", "build_parts", "evaluate_run", "load_result", "run_experiment", "save_task_checkpoint"]
_Run = RunState  # the older private name


def run_experiment(
    config: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Run (or resume) the continual-learning experiment described by `config`; see module docstring.

    Only one process may use a run directory at a time (see runlock.py). Resuming a finished run runs
    nothing and returns its result with ``already_finished=True``. `config` is left unchanged.
    """
    if run_dir is None and not config.output.dir:
        check_run_name(config.name)  # it becomes runs/<name>
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
    check_output_dir(run_dir, "--resume" if resume else "output.dir")
    config = copy.deepcopy(config)  # the engine's own copy: the caller's config is never changed
    config.output.dir = str(run_dir)
    # build + validate everything before touching the run directory (a resume restores later)
    parts = build_base(config)
    config = parts.config  # resolved (e.g. the backbone's default target preset filled in)
    run = RunState(config, run_dir, quiet, parts.dist)
    if not resume:
        attach_method(parts, config)
    state = prepare_on_rank0(run, parts, config.to_dict(), resume, overwrite)
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


def _continue(run: RunState, parts: Parts, state: dict[str, Any] | None, resume: bool) -> RunResult:
    """The loop from the saved `state` (None: from the start) to the end."""
    config, dist, tasks = run.config, parts.dist, parts.tasks
    if state is not None and state.get("finished"):
        if dist.is_main:  # a kill between the final commit and metrics.json (older runs)
            ensure_metrics(run.path("metrics.json"), config, [t.name for t in tasks], state["rows"], run.say)
        ddp.barrier(dist)
        result = load_result(run.run_dir)
        result.already_finished = True
        return result
    start_task, start_iter, structured = 0, 0, {}
    if state is not None:
        start_task, start_iter, structured = resume_from(run, parts, state)
    else:
        if resume:  # stopped before its first commit: start from the beginning
            attach_method(parts, config)
        if dist.rank > 0:  # own dropout stream per rank; rank 0 keeps the one-process stream
            seed_everything(derived_seed("rank", config.seed, dist.rank))
        run.rows = [_evaluate(run, parts, tasks, "zero-shot", 0)]
        run.events.append({"event": "evaluation", "after": "zero-shot", "row": run.rows[0]})
        if not parts.strategy.trains:
            run.rows += [list(run.rows[0]) for _ in tasks]
            if run.config.eval.item_scores and parts.dist.is_main:  # the same items for every row
                items = json.loads(run.path("item_scores", "row_000.json").read_text())["items"]
                for index, task in enumerate(tasks):
                    _write_items(run, index + 1, f"after {task.name} (not trained)", tasks, items)
            run.commit(tasks, len(tasks), 0, {}, finished=True)
            return _finish(run, tasks)
        run.commit(tasks, 0, 0, {})
    for index in range(start_task, len(tasks)):
        first = index == start_task
        keep = _run_task(run, parts, tasks, index, start_iter if first else 0, structured if first else {})
        _end_task(run, parts, tasks, index, keep)  # the task's optimizer (FSDP: its shards) freed by now
    return _finish(run, tasks)


def _evaluate(run: RunState, parts: Parts, tasks: list[Task], label: str, row_index: int | None = None) -> list[float]:
    """One evaluation row; with ``eval.item_scores`` and a `row_index`, its per-item scores are written
    (atomically) to ``item_scores/row_<index>.json`` before the row is committed."""
    bar = run.progress(len(tasks), f"eval {label}")
    items: dict[str, Any] | None = {} if run.config.eval.item_scores and row_index is not None else None
    row = evaluate_all(
        parts.backbone, tasks, run.config.eval.batch_size, lambda name: bar.update(1), parts.dist, items,
        run.config.eval.data_workers,
    )  # fmt: skip
    bar.close()
    if items is not None and parts.dist.is_main:
        _write_items(run, row_index, label, tasks, items)
    run.say(f"{label}: " + "  ".join(f"{t.name} {v:.1f}" for t, v in zip(tasks, row)))
    return row


def _write_items(run: RunState, row_index: int, label: str, tasks: list[Task], items: dict[str, Any]) -> None:
    record = {"row": row_index, "after": label, "tasks": [t.name for t in tasks], "items": items}
    io.write_text(run.path("item_scores", f"row_{row_index:03d}.json"), json.dumps(record) + "\n")


def _run_task(run: RunState, parts: Parts, tasks: list[Task], index: int, start_iter: int, saved: dict) -> bool:
    """Train task `index` (from `start_iter`, restoring `saved`); whether its optimizer state runs on."""
    cfg, task, strategy = task_train_config(run.config.train, tasks[index]), tasks[index], parts.strategy
    strategy.collect_task_inputs(parts.model, parts.backbone, task, cfg.batch_size)  # InfLoRA designs A
    strategy.begin_task(parts.model, task.name)
    if cfg.compile:  # after begin_task, so the task's adapter tensors exist (engine/compiled.py)
        compile_model(parts.backbone.model)
    params = strategy.trainable(parts.model)
    ddp.broadcast_parameters(params.values(), parts.dist)  # the same starting point on every rank
    if start_iter > 0:
        restore_snapshot_tensors(params, saved)
    step_loss = _parallel(parts, task, cfg, params)
    params = strategy.trainable(parts.model)  # FSDP: the sharded parameters that replaced them
    optimizer, scheduler, keep = _optimizer(run, parts, params, cfg, start_iter, saved)
    bar = run.progress(cfg.iterations, f"task {index + 1}/{len(tasks)} {task.name}", initial=start_iter)
    last_good = [start_iter]

    def on_step(log: StepLog) -> None:
        bar.update(1)
        if log.iteration % cfg.log_every == 0 or log.iteration == cfg.iterations:
            bar.set_postfix(loss=f"{log.loss:.4f}", lr=f"{log.lr:.2e}")
            log.extra.update(strategy.step_report(parts.model))  # CoDyRA: surviving ranks
            run.events.append(_step_event(index, task, log))
        if log.iteration % cfg.checkpoint_every == 0 and log.iteration < cfg.iterations:
            run.commit(tasks, index, log.iteration, optimizer_snapshot(params, optimizer, scheduler))
            last_good[0] = log.iteration

    try:
        train_task(
            backbone=parts.backbone, model=parts.model, task=task, task_index=index, cfg=cfg,
            seed=run.config.seed, optimizer=optimizer, scheduler=scheduler, start_iteration=start_iter,
            after_step=strategy.after_step(parts.model), on_step=on_step, device=parts.device,
            step_loss=step_loss, dist=parts.dist,
        )  # fmt: skip
    except NonFiniteLossError as exc:
        bar.close()
        run.write_results(tasks)
        raise NonFiniteLossError(
            f"{exc}. The last good state (task {index + 1}, iteration {last_good[0]}) and the checkpoints of "
            f"finished tasks are kept in {run.run_dir}"
        ) from None
    bar.close()
    if keep:
        run.kept_optimizer = full_tensors(optimizer.state_dict())
    step_loss.release()  # FSDP: the plain model back for end_task, the checkpoint and the evaluation
    return keep


def _parallel(parts: Parts, task: Task, cfg: TrainConfig, params: dict) -> ddp.TaskParallel:
    """The task's step loss: through DDP (also the one-process case) or FSDP2 (``train.parallel``)."""
    loss = lambda batch: parts.backbone.loss(batch, task)  # noqa: E731
    if cfg.parallel == "fsdp" and parts.dist.enabled:  # supported methods: checked in attach_method
        return TaskFSDP(parts.model, loss, parts.device)
    find_unused = not parts.strategy.all_trainables_in_loss
    return ddp.TaskDDP(parts.model, loss, list(params.values()), parts.dist, parts.device, find_unused)


def _optimizer(
    run: RunState, parts: Parts, params: dict, cfg: TrainConfig, start_iter: int, saved: dict
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, bool]:
    """The task's optimizer and scheduler over `params`, from the previous task's optimizer state when
    the strategy keeps it, or from the snapshot `saved` when the task resumes at `start_iter` > 0; and
    whether the optimizer state runs on to the next task."""
    optimizer = make_optimizer(list(params.values()), cfg)
    scheduler = make_scheduler(optimizer, cfg)
    keep = parts.strategy.keeps_optimizer(parts.model)
    if keep and start_iter == 0 and run.kept_optimizer is not None:
        # one optimizer for the run (official TRACE); full tensors, scattered onto FSDP shards
        carry_optimizer_state(optimizer, shard_optimizer_state(run.kept_optimizer, optimizer))
    if start_iter > 0:
        restore_snapshot_state(run, optimizer, scheduler, saved)
    return optimizer, scheduler, keep


def _end_task(run: RunState, parts: Parts, tasks: list[Task], index: int, keep: bool) -> None:
    """End task `index` (the method's end_task), save its checkpoint, evaluate every task, commit."""
    task, strategy = tasks[index], parts.strategy
    strategy.end_task(parts.model, parts.dist)
    ddp.check_in_sync(parts.model, parts.dist, f"after task {index + 1} ({task.name!r})")
    if parts.dist.is_main:
        directory = checkpoint_dir(run.run_dir, index, task)
        ckpt.write_dir_atomically(directory, lambda tmp: strategy.save(tmp, parts.model))
    row, report = strategy.evaluate(
        parts.model, parts.dist, lambda: _evaluate(run, parts, tasks, f"after {task.name}", index + 1)
    )
    run.rows.append(row)
    run.events.append(
        {"event": "task_end", "task": index + 1, "task_name": task.name, "method": run.config.method.name,
         "row": row, "rank_report": report}
    )  # fmt: skip
    carried = {"kept_optimizer": run.kept_optimizer} if keep else {}
    run.commit(tasks, index + 1, 0, carried, finished=index + 1 == len(tasks))


def _step_event(index: int, task: Task, log: StepLog) -> dict[str, Any]:
    """One logged step; ``log.extra`` is what the strategy's after-step hook returned (CoDyRA: ``k``)."""
    return {
        "event": "step",
        "task": index + 1,
        "task_name": task.name,
        "iteration": log.iteration,
        "loss": log.loss,
        "lr": log.lr,
        "examples_per_s": round(log.examples_per_s, 2),
        "grad_norm": log.grad_norm,
        **log.extra,  # CoDyRA: the prox threshold k of this step (None while dense), surviving ranks
    }


def _finish(run: RunState, tasks: list[Task]) -> RunResult:
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
    if parts.strategy.trains and done > 0:
        restore = checkpoint_dir(run_dir, done - 1, parts.tasks[done - 1])
    attach_method(parts, config, restore)
    if inference_options:
        parts.strategy.set_inference_options(parts.model, config.method.name, inference_options)
    chosen = [t for t in parts.tasks if not task_names or t.name in task_names]
    run = RunState(parts.config, run_dir, quiet, parts.dist)
    return dict(zip([t.name for t in chosen], _evaluate(run, parts, chosen, "checkpoint")))
