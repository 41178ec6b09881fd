"""Batches made in background processes, so reading, decoding and collating is off the step's path.

``train.data_workers`` / ``eval.data_workers`` = N > 0 runs ``backbone.collate`` in N worker
processes of a `torch.utils.data.DataLoader` (forked, so the examples and the backbone are shared,
not pickled); the main process only moves each finished batch to the device. Batch ``i`` is made
from exactly the examples it would be made from in the main process, in the same order, so:

* evaluation batches are the same batches, and the scores are the same, for any N;
* training batches hold the same examples; a backbone whose training collate draws random numbers
  (CLIP's training transform) draws them, in a worker, from generators seeded by
  ``derived_seed("batch", seed, task index, micro-step)`` (python, numpy and torch), so the crops do
  not depend on N or on which worker made the batch, and a resumed run makes the batches it would
  have made. With N = 0 they come from the main process's generators, as before the option existed;
  so N = 0 and N > 0 give the same run except for those random draws (the same to the bit for
  backbones whose collate is deterministic: text, causal LM, CLIP without ``train_augment``).

Worker processes see the backbone with ``device`` set to the CPU (the batch crosses to the main
process in shared memory and is moved there). An error in a worker (an unreadable image) stops the
run with the worker's message. Linux and other systems with ``fork`` only.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from rankwise.engine.device import derived_seed, seed_everything
from rankwise.errors import ConfigError, RankwiseError


@dataclasses.dataclass
class _Failed:
    """A rankwise error raised in a worker, carried back to be raised again as itself in the main process."""

    kind: type
    message: str

    def raise_again(self) -> None:
        error = self.kind.__new__(self.kind)
        Exception.__init__(error, self.message)
        raise error


class _Batches(Dataset):
    """Item ``i`` is ``make(first + i)``, made after seeding the worker's generators when `seed` is given."""

    def __init__(self, make: Callable[[int], Any], first: int, stop: int, seed: Callable[[int], int] | None) -> None:
        self.make, self.first, self.count, self.seed = make, first, stop - first, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Any:
        index = self.first + i
        if self.seed is not None:
            seed_everything(self.seed(index))
        try:
            return self.make(index)
        except RankwiseError as exc:  # e.g. an unreadable image: the run stops with its own message
            return _Failed(type(exc), str(exc))


def batch_seed(seed: int, task_index: int) -> Callable[[int], int]:
    """The seed of the generators a worker uses for training micro-step `m` of task `task_index`."""
    return lambda m: derived_seed("batch", seed, task_index, m)


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (in dicts, lists, tuples and dataclasses) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **fields)
    return batch


def check_workers(workers: int, field: str) -> None:
    if workers > 0 and "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigError(field, workers, "0 on this system (background batches need the 'fork' start method)")


def batches(
    make: Callable[[int], Any],
    first: int,
    stop: int,
    *,
    workers: int,
    backbone: Any,
    device: torch.device,
    seed: Callable[[int], int] | None = None,
    field: str = "train.data_workers",
) -> Iterator[Any]:
    """``make(i)`` for i in ``first .. stop - 1``, in order: in this process when `workers` is 0, else
    made ahead by `workers` forked processes (two batches each) and moved to `device` here."""
    if workers == 0:
        for index in range(first, stop):
            yield make(index)
        return
    if stop <= first:
        return
    check_workers(workers, field)

    def on_cpu(_: int) -> None:
        if hasattr(backbone, "device"):
            backbone.device = torch.device("cpu")

    loader = DataLoader(
        _Batches(make, first, stop, seed),
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, stop - first),
        worker_init_fn=on_cpu,
        multiprocessing_context="fork",
        prefetch_factor=2,
        generator=torch.Generator().manual_seed(0),  # its worker base seed: not drawn from the run's generators
    )
    iterator = iter(loader)
    try:
        for batch in iterator:
            if isinstance(batch, _Failed):
                batch.raise_again()
            yield to_device(batch, device)
    finally:
        del iterator  # shuts the workers down, also when the consumer stops early or raises
