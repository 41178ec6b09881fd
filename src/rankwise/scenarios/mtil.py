"""MTIL and X-TAIL: the CLIP continual-learning benchmarks over 11 (10) image datasets.

MTIL (Zheng et al., ZSCL, 2023): tasks in Order I or Order II, full training data or N-shot (N images
per class, seeded); each task is scored against its own classes.

X-TAIL (Xu et al., RAIL, 2024): the 10 MTIL datasets without CIFAR100, 16-shot training; at test time
no task id: every image is classified among the union of all tasks' classes (1,100 with the full
datasets). Task t's labels start at ``label_offset = sum of earlier tasks' class counts``; its
``eval_class_names`` is the union list, and ``info["eval_segments"]`` says which block of it uses
which dataset's templates.

Datasets come from a local root in one of two conventions (see ``mtil_datasets``); each task records
the convention, split seed and shot count in ``task.info``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rankwise.errors import ConfigError, choices
from rankwise.scenarios.mtil_datasets import SPECS, Samples, load_dataset
from rankwise.tasks import ClassificationExample, Task

ORDERS: dict[str, list[str]] = {
    "I": [
        "aircraft",
        "caltech101",
        "cifar100",
        "dtd",
        "eurosat",
        "flowers",
        "food",
        "mnist",
        "pets",
        "cars",
        "sun397",
    ],
    "II": [
        "cars",
        "food",
        "mnist",
        "pets",
        "flowers",
        "sun397",
        "aircraft",
        "caltech101",
        "dtd",
        "eurosat",
        "cifar100",
    ],
}
CONVENTIONS = ("torchvision", "coop")


def few_shot(samples: Samples, shots: int, seed: int) -> Samples:
    """At most `shots` samples per class, drawn with random.Random(seed), classes in sorted order."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(samples):
        by_class.setdefault(y, []).append(i)
    keep: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        keep.extend(idx if len(idx) <= shots else sorted(rng.sample(idx, shots)))
    return [samples[i] for i in sorted(keep)]


def subsample(samples: Samples, cap: int | None, seed: int) -> Samples:
    """A seeded sample of at most `cap` items, original order kept (None = all)."""
    if cap is None or len(samples) <= cap:
        return samples
    return [samples[i] for i in sorted(random.Random(seed).sample(range(len(samples)), cap))]


def _examples(samples: Samples) -> list[ClassificationExample]:
    return [ClassificationExample(x, y) for x, y in samples]


@dataclass
class MTILConfig:
    """The MTIL stream: Order I or II, full or N-shot, each task scored on its own classes."""

    root: str = field(
        default="", metadata={"help": "folder holding the datasets (see `rankwise data check`)"}
    )
    order: str = field(default="I", metadata={"help": "task order: I or II (METHODS.md)"})
    datasets: list[str] | None = field(
        default=None, metadata={"help": "subset of the order's datasets to keep (order kept); null = all"}
    )
    shots: int | None = field(default=None, metadata={"help": "training images per class; null = full data"})
    split_convention: str = field(default="torchvision", metadata={"help": "torchvision | coop"})
    split_seed: int = field(
        default=42, metadata={"help": "seed of the 80/20 split (Caltech101, EuroSAT, SUN397)"}
    )
    shot_seed: int | None = field(default=None, metadata={"help": "seed of the N-shot draw; null = run seed"})
    max_test_per_task: int | None = field(
        default=None,
        metadata={"help": "seeded cap on test images per task for faster evaluation; null = all"},
    )

    valid_datasets: ClassVar[tuple[str, ...]] = tuple(ORDERS["I"])

    def __post_init__(self) -> None:
        if not isinstance(self.root, (str, Path)) or not str(self.root):
            raise ConfigError("scenario.root", self.root, "the data folder (e.g. --set scenario.root=/data)")
        if not Path(self.root).is_dir():
            raise ConfigError("scenario.root", self.root, "an existing folder")
        self.order = str(self.order).upper().replace("ORDER", "").strip() or self.order
        self.order = {"1": "I", "2": "II"}.get(self.order, self.order)
        if self.order not in ORDERS:
            raise ConfigError("scenario.order", self.order, choices(ORDERS))
        if self.datasets is not None:
            bad = [d for d in self.datasets if d not in self.valid_datasets]
            if bad or not self.datasets:
                raise ConfigError(
                    "scenario.datasets", self.datasets, "a non-empty list of " + choices(self.valid_datasets)
                )
        if self.shots is not None and (
            isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 1
        ):
            raise ConfigError("scenario.shots", self.shots, "an integer >= 1 or null (full data)")
        if self.split_convention not in CONVENTIONS:
            raise ConfigError("scenario.split_convention", self.split_convention, choices(CONVENTIONS))
        if self.max_test_per_task is not None and self.max_test_per_task < 1:
            raise ConfigError("scenario.max_test_per_task", self.max_test_per_task, "an integer >= 1 or null")

    def task_keys(self) -> list[str]:
        keys = [k for k in ORDERS[self.order] if k in self.valid_datasets]
        return keys if self.datasets is None else [k for k in keys if k in self.datasets]


@dataclass
class XTAILConfig(MTILConfig):
    """X-TAIL: the MTIL datasets without CIFAR100, 16-shot, union label space at test time."""

    shots: int | None = field(default=16, metadata={"help": "training images per class (X-TAIL: 16)"})
    valid_datasets: ClassVar[tuple[str, ...]] = tuple(k for k in ORDERS["I"] if k != "cifar100")


def _load_tasks(config: MTILConfig, seed: int) -> list[Task]:
    shot_seed = seed if config.shot_seed is None else config.shot_seed
    tasks = []
    for key in config.task_keys():
        spec = SPECS[key]
        (names, train, test), used = load_dataset(
            key, config.root, config.split_convention, config.split_seed
        )
        if config.shots is not None:
            train = few_shot(train, config.shots, shot_seed)
        test = subsample(test, config.max_test_per_task, shot_seed)
        info: dict[str, Any] = {
            "dataset": spec.title,
            "split_convention": used,
            "requested_convention": config.split_convention,
            "split_seed": config.split_seed,
            "shots": config.shots,
            "shot_seed": shot_seed,
            "root": str(config.root),
            "num_classes": len(names),
            "num_train": len(train),
            "num_test": len(test),
        }
        tasks.append(
            Task(
                name=key,
                train=_examples(train),
                test=_examples(test),
                class_names=names,
                templates=list(spec.templates),
                info=info,
            )
        )
    return tasks


def build_mtil(config: MTILConfig, seed: int) -> list[Task]:
    """MTIL tasks in the configured order; each evaluated against its own classes."""
    return _load_tasks(config, seed)


def build_xtail(config: XTAILConfig, seed: int) -> list[Task]:
    """X-TAIL tasks: own classes for training, the union of all tasks' classes for evaluation."""
    tasks = _load_tasks(config, seed)
    union: list[str] = []
    segments = []
    for task in tasks:
        segments.append(
            {
                "task": task.name,
                "offset": len(union),
                "count": len(task.class_names or []),
                "templates": list(task.templates or []),
            }
        )
        union.extend(task.class_names or [])
    for task, segment in zip(tasks, segments):
        task.eval_class_names = union
        task.label_offset = segment["offset"]
        task.info["eval_segments"] = segments
        task.info["union_classes"] = len(union)
    return tasks
