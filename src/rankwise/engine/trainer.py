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
from rankwise.engine.distributed import SINGLE, DistContext, TaskDDP, TaskParallel, mean_scalar, shard
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
    """What the loop reports after every optimizer step."""

    iteration: int
    loss: float
    lr: float
    examples_per_s: float
    grad_norm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. CoDyRA's prox threshold {"k": k}


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
    A non-finite loss raises `NonFiniteLossError` before any parameter is updated with it.
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
    for it in range(start_iteration + 1, cfg.iterations + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total_loss = 0.0
        extra_total: float | None = None  # the method's regulariser over this step, when it adds one
        for micro in range(cfg.grad_accumulation):
            batch = next(micro_steps)
            with step_loss.sync(last=micro == cfg.grad_accumulation - 1):
                with autocast:
                    loss = step_loss(batch)
                extra_term = extra_loss() if extra_loss is not None else None
                if extra_term is not None:  # the method's regulariser (O-LoRA); None adds nothing at all
                    loss = loss + extra_term
                    extra_total = (extra_total or 0.0) + float(extra_term.detach().float()) / cfg.grad_accumulation
                value = mean_scalar(float(loss.detach().float().sum()), dist, device)
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"training loss is {value} on task {task_index + 1} ({task.name!r}), "
                        f"iteration {it}: stopped; try a lower train.lr or set train.grad_clip"
                    )
                (loss / cfg.grad_accumulation).backward()
            total_loss += value / cfg.grad_accumulation
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = float(whole(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)))  # FSDP: a DTensor
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        extra = (after_step(it, cfg.iterations) or {}) if after_step is not None else {}
        if extra_total is not None:  # logged only when the method adds a term (already inside `loss`)
            extra = {**extra, "extra_loss": extra_total}
        elapsed = max(time.perf_counter() - started, 1e-9)
        on_step(
            StepLog(it, total_loss, lr, cfg.batch_size * cfg.grad_accumulation / elapsed, grad_norm, dict(extra))
        )
    model.eval()
