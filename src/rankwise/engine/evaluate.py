"""Evaluation: score every task with its metric, ``SCORERS[task.metric](predictions, targets)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from rankwise.engine.distributed import SINGLE, DistContext, gather_objects, shard
from rankwise.engine.loader import batches
from rankwise.errors import ConfigError, DataError, choices
from rankwise.scoring import SCORERS, item_scores
from rankwise.tasks import ClassificationExample, Task


def validate_tasks(tasks: Sequence[Task]) -> None:
    """Catch bad scenario output before any training: empty tasks, labels outside the label list."""
    if not tasks:
        raise DataError("the scenario produced no tasks")
    names = [t.name for t in tasks]
    for task in tasks:
        if names.count(task.name) > 1:
            raise DataError(
                f"task name {task.name!r} appears {names.count(task.name)} times; names must be unique"
            )
        if task.metric not in SCORERS:
            raise ConfigError(f"task {task.name!r}: metric", task.metric, choices(SCORERS))
        for split in ("train", "test"):
            if len(getattr(task, split)) == 0:
                raise DataError(f"task {task.name!r} has an empty {split} split")
        if task.class_names is not None:
            n_train = len(task.class_names)
            n_eval = len(task.eval_class_names) if task.eval_class_names is not None else n_train
            for split, limit, offset in (("train", n_train, 0), ("test", n_eval, task.label_offset)):
                for i, ex in enumerate(getattr(task, split)):
                    if isinstance(ex, ClassificationExample) and not 0 <= ex.label + offset < limit:
                        raise DataError(
                            f"task {task.name!r} {split} example {i} has label id {ex.label}, "
                            f"outside its label list of {limit} classes"
                        )


def _evaluation(backbone: Any) -> AbstractContextManager[Any]:
    """The backbone's ``evaluation()`` block (optional in the Backbone protocol, tasks.py), else nothing."""
    scope = getattr(backbone, "evaluation", None)
    return scope() if scope is not None else nullcontext()


def _length_order(backbone: Any, examples: Sequence[Any], task: Task) -> list[int]:
    """Indices of `examples` in the order they are batched: by ``backbone.eval_length`` (shortest
    first, ties in test-set order) when the backbone has it, else the test set's own order."""
    length = getattr(backbone, "eval_length", None)
    if length is None:
        return list(range(len(examples)))
    return sorted(range(len(examples)), key=lambda i: length(examples[i], task))


@dataclass
class _Plan:
    """How one task's test set is batched: this rank's examples, their batching order, batch starts."""

    task: Task
    examples: Sequence[Any]
    order: list[int]
    batch_size: int

    @property
    def count(self) -> int:
        return -(-len(self.examples) // self.batch_size)

    def indices(self, b: int) -> list[int]:
        return self.order[b * self.batch_size : (b + 1) * self.batch_size]

    def collate(self, backbone: Any, b: int) -> Any:
        return backbone.collate([self.examples[i] for i in self.indices(b)], self.task, False)


def _plan(backbone: Any, task: Task, batch_size: int, dist: DistContext) -> _Plan:
    examples = shard(task.test, dist)
    return _Plan(task, examples, _length_order(backbone, examples, task), batch_size)


def _made(backbone: Any, plans: Sequence[_Plan], workers: int) -> Iterator[Any]:
    """The collated batches of `plans`, in order: one stream (one set of workers) for all of them."""
    flat = [(plan, b) for plan in plans for b in range(plan.count)]
    device = getattr(backbone, "device", None) or torch.device("cpu")
    return batches(
        lambda k: flat[k][0].collate(backbone, flat[k][1]), 0, len(flat),
        workers=workers, backbone=backbone, device=device, field="eval.data_workers",
    )  # fmt: skip


@torch.no_grad()
def _score(
    backbone: Any, plan: _Plan, made: Iterator[Any], dist: DistContext, items: dict[str, Any] | None
) -> float:
    """Score of `plan`'s task from its batches, taken from `made` in order."""
    task = plan.task
    backbone.model.eval()
    predictions: list[Any] = [None] * len(plan.examples)
    targets: list[Any] = [None] * len(plan.examples)
    with _evaluation(backbone):
        for b in range(plan.count):
            batch = next(made)
            answers = zip(plan.indices(b), backbone.predict(batch, task), backbone.targets(batch), strict=True)
            for i, prediction, target in answers:
                predictions[i], targets[i] = prediction, target
    if dist.enabled:
        parts = gather_objects((predictions, targets), dist)
        predictions = [p for preds, _ in parts for p in preds]
        targets = [t for _, targs in parts for t in targs]
    if items is not None:
        items[task.name] = item_scores(task.metric, predictions, targets)
    return float(SCORERS[task.metric](predictions, targets))


def evaluate_task(
    backbone: Any,
    task: Task,
    batch_size: int,
    dist: DistContext = SINGLE,
    items: dict[str, Any] | None = None,
    workers: int = 0,
) -> float:
    """Score of the current model on `task.test`, in [0, 100].

    With several processes each rank predicts a contiguous slice of the test set; the slices'
    predictions and targets are gathered in order and every rank scores the whole list. With
    `items`, ``items[task.name]`` gets the per-item scores (`rankwise.scoring.item_scores`; None for
    a metric that is not a mean over items). `workers` > 0 makes the batches in that many background
    processes (`rankwise.engine.loader`; the same batches, so the same scores).
    """
    plan = _plan(backbone, task, batch_size, dist)
    return _score(backbone, plan, _made(backbone, [plan], workers), dist, items)


def evaluate_all(
    backbone: Any,
    tasks: Sequence[Task],
    batch_size: int,
    progress: Callable[[str], None] | None = None,
    dist: DistContext = SINGLE,
    items: dict[str, Any] | None = None,
    workers: int = 0,
) -> list[float]:
    """One row of the accuracy matrix: the score on every task, in stream order (per-item scores
    into `items` when given, as in `evaluate_task`). With `workers` > 0 one set of background
    processes makes the batches of every task, so a row starts them once."""
    plans = [_plan(backbone, task, batch_size, dist) for task in tasks]
    made = _made(backbone, plans, workers)
    row = []
    with _evaluation(backbone):  # one pass over a model that does not change: one prompt-cache key
        for plan in plans:
            row.append(_score(backbone, plan, made, dist, items))
            if progress is not None:
                progress(plan.task.name)
    return row
