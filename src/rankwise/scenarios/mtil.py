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

The defaults reproduce the official CoDyRA / MoRAM X-TAIL code (``main.py``, ``scenario_datasets``):
CoOp split files, its class names and one template per dataset (``mtil_names``), and its few-shot
draw (``official_few_shot``). ``prompts: zscl``, ``shot_sampling: per_dataset`` and
``split_convention: torchvision`` are the named deviations.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rankwise.errors import ConfigError, choices
from rankwise.scenarios.mtil_datasets import SPECS, Samples, load_dataset
from rankwise.scenarios.mtil_names import PROMPT_MODES, templates_for
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
SHOT_SAMPLING = ("official", "per_dataset")
# The official code builds these two from torchvision and draws their shots with numpy (collections.py).
NUMPY_SAMPLED = ("mnist", "cifar100")


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


def _coop_draw(rng: random.Random, samples: Sequence[tuple[Any, int]], shots: int) -> Samples:
    """One CoOp ``generate_fewshot_dataset`` call: classes in order of first appearance, per class
    ``rng.sample(items, shots)`` or, with fewer items than shots, ``rng.choices(items, k=shots)``."""
    by_class: dict[int, list[tuple[Any, int]]] = {}
    for item in samples:
        by_class.setdefault(item[1], []).append(item)
    out: Samples = []
    for items in by_class.values():
        out.extend(rng.sample(items, shots) if len(items) >= shots else rng.choices(items, k=shots))
    return out


def _numpy_draw(rng: np.random.RandomState, samples: Samples, shots: int) -> Samples:
    """collections.py ``FewShotDataset``: classes sorted, ``choice(indices, shots, replace=too few)``."""
    targets = np.array([y for _, y in samples])
    picks: list[int] = []
    for cls in np.unique(targets):
        idx = np.where(targets == cls)[0]
        picks.extend(int(i) for i in rng.choice(idx, shots, replace=len(idx) < shots))
    return [samples[i] for i in picks]


def official_few_shot(
    trains: dict[str, Samples], order: Sequence[str], shots: int, seed: int
) -> dict[str, Samples]:
    """The shots the official X-TAIL code trains on, for the task sequence ``order``.

    The official ``main.py`` seeds ``random`` and ``numpy`` once with the run seed and then draws
    from those global streams: task t's dataset is built (its draw is kept), and the evaluation after
    task t builds every dataset of the sequence twice (text prompts, then test loaders), each build
    drawing again (discarded). CoOp datasets draw with ``random`` (``_coop_draw``); MNIST and
    CIFAR100 draw with ``numpy`` at their training task only (``_numpy_draw``). Replaying the same
    calls in the same order gives the same picks for the same split files.
    """
    py_rng, np_rng = random.Random(seed), np.random.RandomState(seed)
    picked: dict[str, Samples] = {}
    for key in order:
        if key in NUMPY_SAMPLED:
            picked[key] = _numpy_draw(np_rng, trains[key], shots)
        else:
            picked[key] = _coop_draw(py_rng, trains[key], shots)
        for _ in range(2):  # evaluation: all prompts, then all test sets
            for other in order:
                if other not in NUMPY_SAMPLED:
                    _coop_draw(py_rng, trains[other], shots)
    return picked


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
    order: str = field(default="I", metadata={"help": "task order: I or II (docs/methods.md)"})
    datasets: list[str] | None = field(
        default=None, metadata={"help": "subset of the order's datasets to keep (order kept); null = all"}
    )
    shots: int | None = field(default=None, metadata={"help": "training images per class; null = full data"})
    split_convention: str = field(
        default="coop",
        metadata={
            "help": "coop: CoOp split_zhou_*.json files, as the official CoDyRA/MoRAM code (MNIST and "
            "CIFAR100 use torchvision there too) | torchvision: ZSCL's splits (a deviation)"
        },
    )
    prompts: str = field(
        default="official",
        metadata={
            "help": "official: the official code's class names and single template per dataset "
            "(DTD '{} texture.', EuroSAT names + ' satellite location', MNIST 'number: \"..\"') | "
            "zscl: ZSCL's names and template lists (a deviation; average them with "
            "backbone.eval_templates=average)"
        },
    )
    shot_sampling: str = field(
        default="official",
        metadata={
            "help": "official: replay the official code's seeded draws (one random/numpy stream for the "
            "whole sequence, see official_few_shot) | per_dataset: random.Random(shot_seed) per "
            "dataset, classes sorted, small classes kept whole (a deviation)"
        },
    )
    split_seed: int = field(
        default=42, metadata={"help": "seed of the 80/20 split (Caltech101, EuroSAT, SUN397)"}
    )
    shot_seed: int | None = field(
        default=None, metadata={"help": "seed of the N-shot draw; null = run seed (the official code's)"}
    )
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
        if self.prompts not in PROMPT_MODES:
            raise ConfigError("scenario.prompts", self.prompts, choices(PROMPT_MODES))
        if self.shot_sampling not in SHOT_SAMPLING:
            raise ConfigError("scenario.shot_sampling", self.shot_sampling, choices(SHOT_SAMPLING))
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
    keys = config.task_keys()
    loaded = {
        key: load_dataset(key, config.root, config.split_convention, config.split_seed, config.prompts)
        for key in keys
    }
    trains = {key: loaded[key][0][1] for key in keys}
    if config.shots is not None:
        if config.shot_sampling == "official":
            trains = official_few_shot(trains, keys, config.shots, shot_seed)
        else:
            trains = {key: few_shot(train, config.shots, shot_seed) for key, train in trains.items()}
    tasks = []
    for key in keys:
        (names, _, test), used = loaded[key]
        train = trains[key]
        test = subsample(test, config.max_test_per_task, shot_seed)
        info: dict[str, Any] = {
            "dataset": SPECS[key].title,
            "split_convention": used,
            "requested_convention": config.split_convention,
            "split_seed": config.split_seed,
            "prompts": config.prompts,
            "shots": config.shots,
            "shot_sampling": config.shot_sampling,
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
                templates=templates_for(key, config.prompts),
                info=info,
            )
        )
    seen = 0  # classes of the earlier tasks: the official CLIP loss averages over their prompts too
    for task in tasks:
        task.info["seen_class_count"] = seen
        seen += len(task.class_names or [])
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
