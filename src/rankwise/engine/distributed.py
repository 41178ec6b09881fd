"""Multi-process training (torchrun / ``accelerate launch``): one process per device, one global batch.

Launchers set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR`` / ``MASTER_PORT``);
`init_distributed` reads them and joins the process group (``nccl`` on CUDA, ``gloo`` otherwise).
With ``WORLD_SIZE`` unset or 1 everything here is a no-op, so single-process runs are unchanged.

The scheme (see docs/engine.md):

* **Data**: every rank regenerates the same seeded global batch of ``train.batch_size`` indices
  and takes its own contiguous shard of ``B / N`` (B must be divisible by N), so N processes see
  exactly the examples one process sees.
* **Gradients**: PyTorch's ``DistributedDataParallel`` averages them (`TaskDDP`). Backbones call
  arbitrary methods of the model (``encode_image``, ``generate``), not ``forward``, so the engine
  wraps the *step's loss* in a module whose forward calls ``backbone.loss`` and hands that module
  to DDP; and since the trainable set changes every task (fresh adapters, merged ranks, frozen
  atoms), the wrapper is built anew for each task over exactly the optimizer's parameters
  (``init_sync=False``: the engine broadcasts the task's trainable tensors from rank 0 itself).
  Micro-batches of gradient accumulation run under ``no_sync``; DDP's bucketed all-reduce overlaps
  the backward. ``g = (1/N) sum_r g_r``: for a loss that is a mean over examples and equal shards,
  ``mean_r(mean_{i in shard r} l_i) = mean_i l_i``, so ``g`` is the one-process gradient up to
  floating-point summation order. Full fine-tuning sets ``find_unused_parameters`` (a backbone's
  pooler or head may take no part in the loss; such a tensor keeps no gradient, as in one process).
  Batch-coupled terms (a contrastive class->input term, a token-count mean) are computed per shard,
  as in any data-parallel setup.
* **Consistency**: each task's trainable tensors are broadcast from rank 0 after ``begin_task``
  (like DDP's construction), then every rank applies identical averaged gradients, optimizer steps
  and CoDyRA proximal steps; `check_in_sync` compares a checksum of the whole model across ranks
  after every task and stops the run if they ever differ.
* **Evaluation**: sharded. Rank r predicts a contiguous slice of each test set; predictions and
  targets are gathered in order and every rank scores the full list (any metric works, including
  corpus-level ones). MoRAM activation counts are summed across ranks.
* **Files**: only rank 0 writes the run directory. Resume: rank 0 applies the run-dir rules and
  broadcasts the outcome; every rank reads the snapshot; each rank's RNG state is saved.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from rankwise.errors import ConfigError, RankwiseError

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class OutOfSyncError(RankwiseError):
    """Ranks hold different model weights: the run stopped instead of training on silently."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``world_size`` processes, this one is ``rank`` (``local_rank`` on its node)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}", raw, "an integer (set by torchrun)") from None


def detect() -> DistContext:
    """The launcher's view from ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (1 process when unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(
            "environment variables WORLD_SIZE/RANK", f"{world}/{rank}", "0 <= RANK < WORLD_SIZE"
        )
    return DistContext(world, rank, local)


def init_distributed(device: torch.device) -> DistContext:
    """Join (or reuse) the default process group when launched with more than one process."""
    ctx = detect()
    if not ctx.enabled:
        return ctx
    import torch.distributed as dist

    if not dist.is_available():
        raise RankwiseError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # evaluation of long streams can keep ranks apart for a while: generous collective timeout
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    if dist.get_world_size() != ctx.world_size or dist.get_rank() != ctx.rank:
        raise RankwiseError(
            f"process group (world {dist.get_world_size()}, rank {dist.get_rank()}) disagrees with "
            f"WORLD_SIZE={ctx.world_size}, RANK={ctx.rank}"
        )
    return ctx


def check_batch(batch_size: int, ctx: DistContext) -> None:
    if batch_size % ctx.world_size:
        raise ConfigError(
            "train.batch_size",
            batch_size,
            f"a multiple of the number of processes ({ctx.world_size}): the global batch is split "
            "evenly across ranks",
        )


def shard(items: Sequence[Any], ctx: DistContext) -> Sequence[Any]:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    if not ctx.enabled:
        return items
    n = len(items)
    return items[ctx.rank * n // ctx.world_size : (ctx.rank + 1) * n // ctx.world_size]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


class _StepLoss(nn.Module):
    """A training step's loss as a module's forward, so that DDP sees one forward per micro-batch."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model  # registered: DDP reads its trainable parameters and hooks their gradients
        self._loss = loss

    def forward(self, *args: Any) -> torch.Tensor:
        return self._loss(*args)


class TaskParallel(Protocol):
    """A task's step loss under data parallelism (`TaskDDP`, `fsdp.TaskFSDP`)."""

    def __call__(self, *args: Any) -> torch.Tensor: ...

    def sync(self, last: bool) -> AbstractContextManager[Any]: ...

    def release(self) -> None: ...


class TaskDDP:
    """One task's data parallelism: ``loss(*args)`` through ``DistributedDataParallel`` over `params`
    (the task's optimizer parameters, which must be every trainable tensor of `model`), or called
    as is in a single process. ``sync(last)`` is the context of one micro-batch's forward and
    backward: gradients are all-reduced only on the last micro-batch of an optimizer step."""

    def __init__(
        self,
        model: nn.Module,
        loss: Callable[..., torch.Tensor],
        params: Sequence[torch.nn.Parameter],
        ctx: DistContext,
        device: torch.device,
        find_unused: bool = False,
    ) -> None:
        self._loss = loss
        self._ddp: Any = None
        if not ctx.enabled:
            return
        wanted = {id(p) for p in params}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if wanted != trainable:
            raise RankwiseError(
                f"the optimizer's {len(wanted)} tensors are not the model's {len(trainable)} trainable ones: "
                "DistributedDataParallel averages exactly the tensors that require grad"
            )
        from torch.nn.parallel import DistributedDataParallel

        self._ddp = DistributedDataParallel(
            _StepLoss(model, loss),
            device_ids=[device.index] if device.type == "cuda" and device.index is not None else None,
            broadcast_buffers=False,  # MoRAM's activation counters and banks are not synced per forward
            init_sync=False,
            find_unused_parameters=find_unused,
        )

    def __call__(self, *args: Any) -> torch.Tensor:
        return self._loss(*args) if self._ddp is None else self._ddp(*args)

    def sync(self, last: bool) -> AbstractContextManager[Any]:
        return self._ddp.no_sync() if self._ddp is not None and not last else nullcontext()

    def release(self) -> None:
        """Nothing to undo: DDP leaves the model's parameters as they are (`TaskFSDP` gathers them)."""


def mean_over_ranks(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Elementwise mean of a 1-D tensor over ranks, in float64 (a NaN or inf on any rank makes every
    rank's entry non-finite); one collective for the whole tensor."""
    values = values.double()
    if not ctx.enabled:
        return values
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / ctx.world_size


def broadcast_parameters(tensors: Iterable[torch.Tensor], ctx: DistContext) -> None:
    """Overwrite these tensors on every rank with rank 0's values."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank (picklable objects only)."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def model_checksum(model: torch.nn.Module) -> list[float]:
    """[sum, sum of squares, position-weighted sum] of every floating tensor in the state dict (float64)."""
    total = squares = weighted = 0.0
    for i, (_, t) in enumerate(sorted(model.state_dict().items())):
        if not torch.is_floating_point(t):
            continue
        d = t.detach().double()
        total += float(d.sum())
        squares += float((d * d).sum())
        weighted += (i + 1) * float(d.sum())
    return [total, squares, weighted]


def check_in_sync(model: torch.nn.Module, ctx: DistContext, where: str) -> None:
    """Raise `OutOfSyncError` on every rank unless all ranks hold bitwise-identical checksums."""
    if not ctx.enabled:
        return
    sums = gather_objects(model_checksum(model), ctx)
    if any(s != sums[0] for s in sums[1:]):
        raise OutOfSyncError(
            f"ranks hold different weights {where}: checksums {sums}; stopped (the last commit is kept)"
        )


def reduce_activation_stats(model: torch.nn.Module, ctx: DistContext) -> None:
    """Sum activation statistics (MoRAM's per-atom hit and token counts) over ranks after a sharded
    evaluation: every layer that keeps such counts combines them itself (``combine_activation_stats``)."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    def total(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    for layer in model.modules():
        combine = getattr(layer, "combine_activation_stats", None)
        if combine is not None:
            combine(total)
