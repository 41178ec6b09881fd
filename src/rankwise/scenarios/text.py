"""text-mtil: a stream of real text classification tasks from ``shared/data/text``.

Each task is classified CLIP-style: one natural-language class name per label word, slotted into
task-specific prompt templates. Three on-disk formats are read (see ``shared/data/README.md``):
O-LoRA ``cl_benchmark`` JSON, SentEval-style line files, and TRACE prompt/answer JSON (FOMC); the
task table and the readers live in `rankwise.scenarios.readers`, shared with TRACE.

Data root, first match wins: ``TextMTILConfig.root``; the environment variable ``RANKWISE_DATA``;
``./shared/data`` then ``../shared/data`` relative to the working directory. The root is the folder
that holds ``text/`` (a path to ``text/`` itself is accepted too).

Splits. cl_benchmark, TREC and FOMC have train/test files (FOMC: ``train.json`` / ``test.json``).
MR, CR, SUBJ and MPQA have none: each class's lines are shuffled with ``random.Random(split_seed)``
(classes in sorted order) and the first ``round(0.3 * n_class)`` become test, the rest train, both
kept in file order. Evaluation uses a stratified sample of ``test_size`` test items (largest
remainder per class, ``random.Random(split_seed)``), fixed across run seeds so every method and
seed scores the same items; ``shots`` picks N train items per class with the run seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rankwise.errors import ConfigError, DataError, choices
from rankwise.scenarios.readers import (  # the readers' public names stay importable from here
    FOMC_MARKERS as FOMC_MARKERS,
)
from rankwise.scenarios.readers import (
    TASKS,
    Pairs,
    load_splits,
    resolve_root,
)
from rankwise.scenarios.readers import TextTaskSpec as TextTaskSpec
from rankwise.scenarios.readers import load_cl_benchmark as load_cl_benchmark
from rankwise.scenarios.readers import load_fomc as load_fomc
from rankwise.scenarios.readers import load_lines as load_lines
from rankwise.scenarios.readers import load_trec as load_trec
from rankwise.tasks import ClassificationExample, Task

#: topics, sentiment, question type, entity type, subjectivity, finance, opinion; the two
#: 5-star review tasks and the two binary-sentiment tasks are kept apart in the stream.
DEFAULT_ORDER: tuple[str, ...] = (
    "agnews",
    "yelp",
    "trec",
    "dbpedia",
    "subj",
    "fomc",
    "amazon",
    "sst2",
    "mpqa",
)


def _default_tasks() -> list[str]:
    return list(DEFAULT_ORDER)


@dataclass
class TextMTILConfig:
    """Options of the text-mtil stream (task order, shots, test sample, data root)."""

    root: str | None = field(
        default=None,
        metadata={
            "help": "folder holding text/; None = $RANKWISE_DATA, else ./shared/data or ../shared/data"
        },
    )
    tasks: list[str] = field(
        default_factory=_default_tasks, metadata={"help": f"task order; any of {sorted(TASKS)}"}
    )
    shots: int | None = field(
        default=None, metadata={"help": "train examples per class (seeded), None = all"}
    )
    test_size: int | None = field(
        default=300, metadata={"help": "stratified test items per task (fixed by split_seed), None = all"}
    )
    split_seed: int = field(
        default=0, metadata={"help": "seed of the 70/30 splits of MR/CR/SUBJ/MPQA and the test sample"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str) or not isinstance(self.tasks, Sequence) or not self.tasks:
            raise ConfigError(
                "scenario.tasks", self.tasks, f"a non-empty list of task names, each {choices(sorted(TASKS))}"
            )
        self.tasks = list(self.tasks)
        for name in self.tasks:
            if name not in TASKS:
                raise ConfigError("scenario.tasks", name, choices(sorted(TASKS)))
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("scenario.tasks", self.tasks, "each task at most once")
        if self.shots is not None and (not isinstance(self.shots, int) or self.shots < 1):
            raise ConfigError("scenario.shots", self.shots, "an integer >= 1, or null for all training data")
        if self.test_size is not None and (not isinstance(self.test_size, int) or self.test_size < 1):
            raise ConfigError(
                "scenario.test_size", self.test_size, "an integer >= 1, or null for the whole test set"
            )
        if not isinstance(self.split_seed, int):
            raise ConfigError("scenario.split_seed", self.split_seed, "an integer")


# -- sampling ----------------------------------------------------------------------------------
def stratified_sample(labels: Sequence[int], size: int, rng: random.Random) -> list[int]:
    """Indices of `size` items, each class keeping its share (largest remainder), in original order."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    if size >= len(labels):
        return list(range(len(labels)))
    exact = {c: size * len(ids) / len(labels) for c, ids in by_class.items()}
    quota = {c: int(q) for c, q in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - quota[c]), c))[: size - sum(quota.values())]:
        quota[c] += 1
    chosen = [i for c in sorted(by_class) for i in rng.sample(by_class[c], quota[c])]
    return sorted(chosen)


def few_shot(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Indices of `shots` items per class (all of a smaller class), in original order."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    return sorted(i for c in sorted(by_class) for i in rng.sample(by_class[c], min(shots, len(by_class[c]))))


def _examples(pairs: Pairs, label_ids: dict[str, int], where: str) -> list[ClassificationExample]:
    out = []
    for i, (text, label) in enumerate(pairs):
        if label not in label_ids:
            raise DataError(f"{where} item {i}: label {label!r} is not one of {sorted(label_ids)}")
        out.append(ClassificationExample(text, label_ids[label]))
    return out


def build_task(name: str, text_root: Path, config: TextMTILConfig, seed: int) -> Task:
    """One task: load, map labels to ids, sample shots (run seed) and the test set (split_seed)."""
    spec = TASKS[name]
    folder = text_root / spec.folder
    if not folder.is_dir():
        raise DataError(
            f"text-mtil task {name!r}: folder {folder} does not exist (data root {text_root.parent})"
        )
    splits = load_splits(spec, folder, config.split_seed)
    label_ids = {raw: i for i, raw in enumerate(spec.class_names)}
    train = _examples(splits["train"], label_ids, f"{folder} train")
    test = _examples(splits["test"], label_ids, f"{folder} test")
    if not train or not test:
        raise DataError(
            f"text-mtil task {name!r} in {folder}: empty split (train {len(train)}, test {len(test)})"
        )
    if config.shots is not None:
        train = [
            train[i]
            for i in few_shot([e.label for e in train], config.shots, random.Random(f"{seed}:{name}"))
        ]
    n_test_total = len(test)
    if config.test_size is not None:
        keep = stratified_sample(
            [e.label for e in test], config.test_size, random.Random(f"{config.split_seed}:{name}")
        )
        test = [test[i] for i in keep]
    return Task(
        name=name,
        train=train,
        test=test,
        class_names=list(spec.class_names.values()),
        templates=list(spec.templates),
        metric="accuracy",
        info={
            "source": str(folder),
            "format": spec.fmt,
            "domain": spec.domain,
            "shots": config.shots,
            "n_train": len(train),
            "n_test": len(test),
            "n_test_total": n_test_total,
            "split": "seeded stratified 70/30 (split_seed)" if spec.fmt == "lines" else "files",
            "split_seed": config.split_seed,
            "label_words": list(spec.class_names),
        },
    )


def build_scenario(config: TextMTILConfig, seed: int) -> list[Task]:
    """The configured task stream, in order."""
    text_root = resolve_root(config.root)
    return [build_task(name, text_root, config, seed) for name in config.tasks]
