"""The data types that scenarios produce and backbones consume.

This module is the only thing scenarios and backbones share: a scenario builds `Task`s, a
backbone turns a task's examples into batches, losses and predictions, and the engine joins them.
Neither imports the other, and neither knows which adapter is in use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class ClassificationExample:
    """One input (a string, an image path or a PIL image) and its label id within the task."""

    input: Any
    label: int


@dataclass(frozen=True)
class GenerationExample:
    """One prompt/answer pair (TRACE format)."""

    prompt: str
    answer: str


@dataclass
class Task:
    """One step of a continual-learning stream.

    Attributes:
        name: unique name within the stream (e.g. ``"dtd"``).
        train: examples the model is trained on.
        test: examples the task is evaluated on (after every task, seen and unseen).
        class_names: label words / class names; ``class_names[i]`` names label id ``i``.
        templates: prompt templates with one ``{}`` placeholder for the class name.
        metric: how predictions are scored, a key of ``rankwise.scoring.SCORERS``.
        eval_class_names: label space used at evaluation when it differs from the task's own
            (X-TAIL: the union of all tasks' classes, no task id); ``None`` means ``class_names``.
        label_offset: where this task's labels start inside ``eval_class_names``.
        info: provenance recorded in the run (split convention, source folder, shot count, ...).
    """

    name: str
    train: Sequence[Any]
    test: Sequence[Any]
    class_names: list[str] | None = None
    templates: list[str] | None = None
    metric: str = "accuracy"
    eval_class_names: list[str] | None = None
    label_offset: int = 0
    max_new_tokens: int = 32
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backbone(Protocol):
    """What the engine needs from a model family (CLIP, sentence encoder, causal LM)."""

    #: the module adapters are injected into (in place)
    model: nn.Module
    #: name of the preset in ``rankwise.adapters.presets.TARGET_PRESETS`` used when a config gives none
    default_target_preset: str

    def collate(self, examples: Sequence[Any], task: Task, train: bool) -> Any:
        """Turn examples into a batch on the backbone's device."""

    def loss(self, batch: Any, task: Task) -> torch.Tensor:
        """Scalar training loss of a batch of the current task."""

    def predict(self, batch: Any, task: Task) -> list[Any]:
        """Predictions, comparable to `targets(batch)` by the task's metric."""

    def targets(self, batch: Any) -> list[Any]:
        """Gold answers of a batch (label ids in the evaluation label space, or answer strings)."""

    # Optional: ``eval_length(example, task) -> int``, the padded length an example's evaluation input
    # costs; when a backbone has it, each test set is evaluated in batches of similar length (sorted,
    # scores returned in the test set's order), so short inputs are not padded to a long neighbour's
    # width (the causal LM's generation). Backbones whose outputs must not depend on the batch
    # composition to the last bit (the protocol's recorded runs) leave it out.
    # Optional: ``evaluation() -> context manager`` around one evaluation pass of a task, during which
    # the model does not change (the CLIP and sentence-encoder backbones hash their text tower once
    # there for the prompt-feature cache). The engine calls it when a backbone has it.


PRESENT_LABELS = "present_labels"  # the key of `distinct_labels` in a dict training batch


def distinct_labels(labels: Sequence[int], device: torch.device | str | None) -> torch.Tensor:
    """A batch's sorted distinct labels as a long tensor on `device`: what ``torch.unique`` of its
    label tensor gives, found on the host by ``collate`` so that a loss need not read labels back from
    the device (on a GPU that read makes the host wait for every queued step)."""
    return torch.tensor(sorted(set(labels)), dtype=torch.long, device=device)
