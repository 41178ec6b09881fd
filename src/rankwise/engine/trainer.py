"""Training one task: optimizer, schedule, seeded data order and the step loop.

One optimizer step (iteration ``it``, 1-based) = ``grad_accumulation`` micro-batches, each
``loss / grad_accumulation`` back-propagated, optional global-norm clipping, ``optimizer.step()``,
``scheduler.step()``, then ``model.after_optimizer_step(it, total)`` (CoDyRA's proximal gate step,
with the threshold the reference loop uses at its 0-based iteration ``it - 1``). What that call returns
(CoDyRA: ``{"k": k}``) is reported in ``StepLog.extra``.

The learning rate at step ``it`` is ``lr * f(it - 1)`` with a linear warmup over
``warmup_iterations`` then cosine decay to 0 (or constant). Data order is a pure function of
``(seed, task index, micro-step)``: the example stream is a concatenation of per-epoch permutations
drawn from private generators, so a resumed run regenerates exactly the batches it would have seen.

Under several processes (see distributed.py) every rank draws the same global batch and trains on
its contiguous shard; the loss is averaged over ranks (for logging and the NaN check, so every rank
stops together) and the gradients are averaged before clipping and the optimizer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rankwise.adapters.base import whole
from rankwise.config import TrainConfig
from rankwise.engine.device import data_generator
from rankwise.engine.distributed import SINGLE, DistContext, TaskDDP, TaskParallel, mean_over_ranks, shard
from rankwise.engine.loader import batch_seed, batches
from rankwise.errors import RankwiseError
from rankwise.tasks import Task


class NonFiniteLossError(RankwiseError, FloatingPointError):
    """The training loss became NaN or infinite; the run stopped at its last good snapshot."""


def make_optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise RankwiseError("no trainable parameters for this task (did the adapter match any layer?)")
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def carry_optimizer_state(optimizer: torch.optim.Optimizer, previous: dict[str, Any]) -> None:
    """Give `optimizer` the per-parameter state of `previous` (an optimizer state_dict), in order.

    The official TRACE runner builds one optimizer for the whole task sequence and re-initialises the
    trainable factors in place, so Adam's moments and step count run on across tasks. Here each task has
    fresh parameter objects and a fresh optimizer; loading the previous task's state onto them (the i-th
    parameter gets the i-th state) reproduces that. Hyper-parameters (lr, betas, ...) stay this
    optimizer's own.
    """
    current = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if [len(g["params"]) for g in current["param_groups"]] != [len(g["params"]) for g in previous["param_groups"]]:
        raise RankwiseError("keep_optimizer: the new task's trainable tensors do not match the previous task's")
    for index, state in previous["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[int(index)].shape:
                raise RankwiseError(
                    f"keep_optimizer: state {key!r} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the new task's tensor {tuple(params[int(index)].shape)}"
                )
    optimizer.load_state_dict({"state": previous["state"], "param_groups": current["param_groups"]})


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr for 0-based optimizer step `step`."""
    if step < cfg.warmup_iterations:
        return (step + 1) / (cfg.warmup_iterations + 1)
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.iterations - cfg.warmup_iterations)
    return 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup_iterations) / span))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


class DataOrder:
    """Indices of micro-batch ``m`` of a task: positions [m*B, (m+1)*B) of the epoch-permutation stream."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, task_index: int) -> None:
        self.n, self.batch_size, self.seed, self.task_index = num_examples, batch_size, seed, task_index
        self._cache: dict[int, list[int]] = {}

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._cache:
            self._cache = {
                epoch: torch.randperm(
                    self.n, generator=data_generator(self.seed, self.task_index, epoch)
                ).tolist()
            }
        return self._cache[epoch]

    def indices(self, micro_step: int) -> list[int]:
        start = micro_step * self.batch_size
        return [self._epoch(p // self.n)[p % self.n] for p in range(start, start + self.batch_size)]


@dataclass
class StepLog:
    """What the loop reports after every optimizer step.

    ``loss``, ``grad_norm`` and ``extra["extra_loss"]`` are read from the device only at the loop's sync
    points (`sync_point`: every ``log_every`` and ``checkpoint_every`` steps and the last one), so a
    step between them does not wait for the device: there ``synced`` is False and they are None.
    ``examples_per_s`` at a sync point is the throughput since the previous one (device work included).
    """

    iteration: int
    loss: float | None
    lr: float
    examples_per_s: float
    grad_norm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. CoDyRA's prox threshold {"k": k}
    synced: bool = True


def sync_point(iteration: int, cfg: TrainConfig) -> bool:
    """Whether the loop reads this step's values from the device (logging, snapshots, the task's end)."""
    return iteration % cfg.log_every == 0 or iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations


@dataclass
class _Pending:
    """The steps since the last sync point: every micro-batch's loss (a float32 scalar) still on the
    device, and the last step's regulariser and gradient norm (the only ones logged)."""

    first: int = 0  # the iteration of losses[0]; the steps are consecutive
    losses: list[torch.Tensor] = field(default_factory=list)  # grad_accumulation per step
    extra: torch.Tensor | None = None
    norm: torch.Tensor | None = None

    def add(self, iteration: int, micro: list[torch.Tensor], extra: torch.Tensor | None, norm: torch.Tensor | None) -> None:
        if not self.losses:
            self.first = iteration
        self.losses.extend(micro)
        self.extra, self.norm = extra, norm

    def read(self, task: Task, task_index: int, grad_accumulation: int, dist: DistContext) -> tuple[float, float | None, float | None]:
        """One host read of every pending value: the last step's (loss, extra loss, grad norm).

        Raises `NonFiniteLossError` naming the first step whose loss (averaged over processes) is NaN
        or infinite. The arithmetic is the per-step one: each micro-batch's loss summed in float32,
        averaged over processes, divided by the accumulation and summed over the step's micro-batches.
        """
        values = mean_over_ranks(torch.stack(self.losses), dist).tolist()  # the one sync of the interval
        for index, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"training loss is {value} on task {task_index + 1} ({task.name!r}), "
                    f"iteration {self.first + index // grad_accumulation}: stopped; try a lower train.lr "
                    "or set train.grad_clip"
                )
        total = 0.0
        for value in values[-grad_accumulation:]:
            total += value / grad_accumulation
        extra, norm = self.extra, self.norm
        self.losses, self.extra, self.norm = [], None, None
        return total, None if extra is None else float(extra), None if norm is None else float(whole(norm))


def train_task(
    *,
    backbone: Any,
    model: nn.Module,
    task: Task,
    task_index: int,
    cfg: TrainConfig,
    seed: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    start_iteration: int,
    after_step: Callable[[int, int], dict[str, Any] | None] | None,
    on_step: Callable[[StepLog], None],
    device: torch.device,
    step_loss: TaskParallel | None = None,
    dist: DistContext = SINGLE,
) -> None:
    """Run optimizer steps start_iteration+1 .. cfg.iterations of `task`.

    `step_loss(batch)` is the task's loss, called as is in one process and through the task's data
    parallelism under several (`distributed.TaskDDP` or `fsdp.TaskFSDP`, built for this task's
    parameters); its ``sync(last)`` is the context of each micro-batch's forward and backward.
    None: ``backbone.loss(batch, task)`` through `TaskDDP` over the optimizer's parameters.

    The loss back-propagated (and logged) is the task loss plus `model.extra_loss()` when the model
    has one and it is not None (a method's per-step regulariser, e.g. O-LoRA's); its value is logged
    as ``StepLog.extra["extra_loss"]`` (this process's, averaged over micro-batches).
    `on_step` is called after every step (the engine logs, snapshots and updates progress there).
    Values are read from the device only at sync points (`sync_point`: every ``log_every`` and
    ``checkpoint_every`` steps and the last step), once for every step since the previous one, so on a
    GPU the host never waits for a step in between. A non-finite loss raises `NonFiniteLossError` at
    the sync point that reads it, naming the step it happened at: before any snapshot, checkpoint or
    evaluation holds what the steps since then did (the parameters in memory do).
    """
    order = DataOrder(len(task.train), cfg.batch_size, seed, task_index)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    extra_loss = getattr(model, "extra_loss", None)  # RankwiseModel's; a plain module (full) has none
    if step_loss is None:
        step_loss = TaskDDP(model, lambda batch: backbone.loss(batch, task), params, dist, device)
    model.train()

    def make(micro_step: int) -> Any:
        return backbone.collate([task.train[i] for i in shard(order.indices(micro_step), dist)], task, True)

    micro_steps = batches(
        make, start_iteration * cfg.grad_accumulation, cfg.iterations * cfg.grad_accumulation,
        workers=cfg.data_workers, backbone=backbone, device=device, seed=batch_seed(seed, task_index),
    )  # fmt: skip
    pending = _Pending()
    interval_started, interval_examples = time.perf_counter(), 0
    for it in range(start_iteration + 1, cfg.iterations + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        micro_losses: list[torch.Tensor] = []  # kept on the device until the next sync point
        extra_total: torch.Tensor | None = None  # the method's regulariser over this step, when it adds one
        for micro in range(cfg.grad_accumulation):
            batch = next(micro_steps)
            with step_loss.sync(last=micro == cfg.grad_accumulation - 1):
                with autocast:
                    loss = step_loss(batch)
                extra_term = extra_loss() if extra_loss is not None else None
                if extra_term is not None:  # the method's regulariser (O-LoRA); None adds nothing at all
                    loss = loss + extra_term
                    term = extra_term.detach().float().double() / cfg.grad_accumulation
                    extra_total = term if extra_total is None else extra_total + term
                micro_losses.append(loss.detach().float().sum())
                (loss / cfg.grad_accumulation).backward()
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        extra = (after_step(it, cfg.iterations) or {}) if after_step is not None else {}
        pending.add(it, micro_losses, extra_total, grad_norm)
        interval_examples += cfg.batch_size * cfg.grad_accumulation
        if not sync_point(it, cfg):  # nothing read from the device: the host runs ahead
            elapsed = max(time.perf_counter() - started, 1e-9)
            on_step(StepLog(it, None, lr, cfg.batch_size * cfg.grad_accumulation / elapsed, None, dict(extra), False))
            continue
        # A non-finite loss is found here, before a snapshot or checkpoint holds what it did
        total_loss, extra_value, norm_value = pending.read(task, task_index, cfg.grad_accumulation, dist)
        if extra_value is not None:  # logged only when the method adds a term (already inside `loss`)
            extra = {**extra, "extra_loss": extra_value}
        now = time.perf_counter()
        throughput = interval_examples / max(now - interval_started, 1e-9)
        interval_started, interval_examples = now, 0
        on_step(StepLog(it, total_loss, lr, throughput, norm_value, dict(extra)))
    model.eval()
