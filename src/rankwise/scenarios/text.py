"""text-mtil: a stream of real text classification tasks from ``shared/data/text`` (or their Hub copies).

Each task is classified CLIP-style: one natural-language class name per label word, slotted into
task-specific prompt templates. Three on-disk formats are read (see ``shared/data/README.md``):
O-LoRA ``cl_benchmark`` JSON, SentEval-style line files, and TRACE prompt/answer JSON (FOMC); the
task table and the readers live in `rankwise.scenarios.readers`, shared with TRACE. The same tasks
(and the sentence-pair presets of `rankwise.scenarios.text_presets`) are presets of the generic
``text-classification`` scenario (`rankwise.scenarios.text_classification`), built by `builtin_task`.

Data root, first match wins: ``TextMTILConfig.root``; the environment variable ``RANKWISE_DATA``;
``./shared/data`` then ``../shared/data`` relative to the working directory. The root is the folder
that holds ``text/`` (a path to ``text/`` itself is accepted too). When none of the default places
holds it (no ``root``, no ``RANKWISE_DATA``) and ``source`` is ``auto``, each task loads from its
public Hugging Face copy (`text_presets.HUB_SOURCES`, cached by ``datasets`` after the first run);
offline, a one-line error says how to point at local files.

Splits. cl_benchmark, TREC and FOMC have train/test files (FOMC: ``train.json`` / ``test.json``).
MR, CR, SUBJ and MPQA have none: each class's lines are shuffled with ``random.Random(split_seed)``
(classes in sorted order) and the first ``round(0.3 * n_class)`` become test, the rest train, both
kept in file order. Evaluation uses a stratified sample of ``test_size`` test items (largest
remainder per class, ``random.Random(split_seed)``), fixed across run seeds so every method and
seed scores the same items; ``shots`` picks N train items per class with the run seed.

Validation. ``validation_size`` carves a stratified validation set out of each task's train split
(``random.Random(f"{split_seed}:{task}:validation")``, fixed across run seeds); those items are never
trained on. ``evaluate_on: validation`` scores the validation set instead of the test set, which is
how hyper-parameters are chosen without looking at test data (benchmarks/protocol.py).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from rankwise.scenarios.text_presets import (
    HUB_SOURCES,
    PAIR_TASKS,
    hub_description,
    load_hub_task,
    load_pair_task,
)
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
#: auto: the local copy when one is found, else the Hub copy; local: local only; hub: the Hub copy
SOURCES = ("auto", "local", "hub")
#: every built-in task name: text-mtil's single-text tasks and the sentence-pair presets
PRESETS: tuple[str, ...] = (*sorted(TASKS), *sorted(PAIR_TASKS))


def _default_tasks() -> list[str]:
    return list(DEFAULT_ORDER)


#: which held-out split a run scores
EVALUATE_ON = ("test", "validation")


def check_sampling(
    shots: object,
    test_size: object,
    split_seed: object,
    validation_size: object = None,
    evaluate_on: object = "test",
) -> None:
    """Validate the sampling fields shared by the text scenarios (ConfigError naming the field)."""
    if shots is not None and (not isinstance(shots, int) or shots < 1):
        raise ConfigError("scenario.shots", shots, "an integer >= 1, or null for all training data")
    if test_size is not None and (not isinstance(test_size, int) or test_size < 1):
        raise ConfigError("scenario.test_size", test_size, "an integer >= 1, or null for the whole test set")
    if not isinstance(split_seed, int):
        raise ConfigError("scenario.split_seed", split_seed, "an integer")
    check_validation(validation_size, evaluate_on)


def check_validation(validation_size: object, evaluate_on: object) -> None:
    """``scenario.validation_size`` (None or >= 1) and ``scenario.evaluate_on`` (validation needs a size)."""
    if validation_size is not None and (
        not isinstance(validation_size, int) or isinstance(validation_size, bool) or validation_size < 1
    ):
        raise ConfigError(
            "scenario.validation_size", validation_size, "an integer >= 1, or null for no validation split"
        )
    if evaluate_on not in EVALUATE_ON:
        raise ConfigError("scenario.evaluate_on", evaluate_on, choices(EVALUATE_ON))
    if evaluate_on == "validation" and validation_size is None:
        raise ConfigError(
            "scenario.evaluate_on", evaluate_on, "'test' unless scenario.validation_size sets a validation split"
        )


@dataclass(frozen=True)
class Sampling:
    """How a text task's items are drawn: shots (run seed), validation and test samples (split_seed)."""

    shots: int | None = None
    test_size: int | None = None
    split_seed: int = 0
    validation_size: int | None = None
    evaluate_on: str = "test"

    @classmethod
    def of(cls, config: Any) -> Sampling:
        """The sampling fields of a scenario config (text-mtil or text-classification)."""
        return cls(config.shots, config.test_size, config.split_seed, config.validation_size, config.evaluate_on)


@dataclass
class TextMTILConfig:
    """Options of the text-mtil stream (task order, shots, test sample, data root, data source)."""

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
        default=0,
        metadata={"help": "seed of the 70/30 splits of MR/CR/SUBJ/MPQA and the validation and test samples"},
    )
    validation_size: int | None = field(
        default=None,
        metadata={"help": "stratified validation items per task, carved out of train (never trained on)"},
    )
    evaluate_on: str = field(
        default="test", metadata={"help": "held-out split scored: test, or validation (for tuning)"}
    )
    source: str = field(
        default="auto",
        metadata={
            "help": "auto: the local data root when found, else each task's public Hugging Face copy "
            "(needs `datasets`); local: the data root only; hub: the Hugging Face copies"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str) or not isinstance(self.tasks, Sequence) or not self.tasks:
            raise ConfigError(
                "scenario.tasks", self.tasks, f"a non-empty list of task names, each {choices(sorted(TASKS))}"
            )
        self.tasks = list(self.tasks)
        for name in self.tasks:
            if name in PAIR_TASKS:
                raise ConfigError(
                    "scenario.tasks",
                    name,
                    f"a single-text task {choices(sorted(TASKS))}: {name!r} is a sentence-pair task; run it "
                    f"with scenario text-classification (tasks: [{{preset: {name}}}]), which scores it as a pair",
                )
            if name not in TASKS:
                raise ConfigError("scenario.tasks", name, choices(sorted(TASKS)))
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("scenario.tasks", self.tasks, "each task at most once")
        check_sampling(self.shots, self.test_size, self.split_seed, self.validation_size, self.evaluate_on)
        if self.source not in SOURCES:
            raise ConfigError("scenario.source", self.source, choices(SOURCES))


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


def select_examples(
    splits: dict[str, Any], label_words: Sequence[str], task: str, sampling: Sampling, seed: int, where: str
) -> tuple[list[ClassificationExample], list[ClassificationExample], dict[str, Any]]:
    """Label ids (``label_words[i]`` is id i), then the held-out items and the training items.

    Validation: ``sampling.validation_size`` stratified train items (``Random(f"{split_seed}:{task}:validation")``),
    removed from train. Train: ``shots`` per class of the rest (``Random(f"{seed}:{task}")``). Test: a
    stratified sample of ``test_size`` (``Random(f"{split_seed}:{task}")``). Returns train, the scored
    split (test, or validation with ``evaluate_on: validation``) and the split sizes for the task's info.
    """
    label_ids = {raw: i for i, raw in enumerate(label_words)}
    train = _examples(splits["train"], label_ids, f"{where} train")
    test = _examples(splits["test"], label_ids, f"{where} test")
    if not train or not test:
        raise DataError(f"task {task!r} in {where}: empty split (train {len(train)}, test {len(test)})")
    validation: list[ClassificationExample] = []
    if sampling.validation_size is not None:
        if sampling.validation_size >= len(train):
            raise ConfigError(
                "scenario.validation_size", sampling.validation_size,
                f"fewer than the {len(train)} train items of task {task!r} ({where})",
            )  # fmt: skip
        held = set(
            stratified_sample(
                [e.label for e in train], sampling.validation_size,
                random.Random(f"{sampling.split_seed}:{task}:validation"),
            )
        )  # fmt: skip
        validation = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
    if sampling.shots is not None:
        rng = random.Random(f"{seed}:{task}")
        train = [train[i] for i in few_shot([e.label for e in train], sampling.shots, rng)]
    n_test_total = len(test)
    if sampling.test_size is not None:
        keep = stratified_sample(
            [e.label for e in test], sampling.test_size, random.Random(f"{sampling.split_seed}:{task}")
        )
        test = [test[i] for i in keep]
    sizes: dict[str, Any] = {"n_train": len(train), "n_test": len(test), "n_test_total": n_test_total}
    if sampling.validation_size is not None:  # a task without validation reads exactly as before
        sizes.update(n_validation=len(validation), evaluated_split=sampling.evaluate_on)
    return train, validation if sampling.evaluate_on == "validation" else test, sizes


# -- built-in tasks ----------------------------------------------------------------------------
def locate_data(root: str | None, source: str) -> tuple[Path | None, str]:
    """(the local ``text/`` folder or None for the Hub copies, and what to tell a user offline)."""
    if source == "hub":
        return (
            None,
            "point at local files instead: set scenario.source to auto and scenario.root or RANKWISE_DATA",
        )
    try:
        return resolve_root(root), ""
    except DataError:
        if source == "local" or root is not None or os.environ.get("RANKWISE_DATA"):
            raise  # a place the user named that does not hold the data is an error, never a download
    where = f"{Path.cwd() / 'shared' / 'data'} or {Path.cwd().parent / 'shared' / 'data'}"
    return None, (
        f"no local copy at {where}: set scenario.root or RANKWISE_DATA to the folder holding text/ "
        "(docs/text.md), or run once online to cache the Hub copy"
    )


def builtin_task(
    name: str,
    text_root: Path | None,
    *,
    sampling: Sampling,
    seed: int,
    hint: str = "",
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> Task:
    """One built-in task (text-mtil's table or a pair preset) from the local ``text/`` folder or its Hub copy.

    `class_names` / `templates` replace the preset's own (same number of classes, label-id order)."""
    pair = name in PAIR_TASKS
    spec: Any = PAIR_TASKS[name] if pair else TASKS[name]
    if text_root is None:
        splits, source, fmt = load_hub_task(name, hint), None, "hf"
    else:
        folder = text_root / spec.folder
        if not folder.is_dir():
            raise DataError(
                f"text-mtil task {name!r}: folder {folder} does not exist (data root {text_root.parent})"
            )
        splits = load_pair_task(name, folder) if pair else load_splits(spec, folder, sampling.split_seed)
        source, fmt = str(folder), "cl_benchmark-pair" if pair else spec.fmt
    where = source or name
    train, scored, sizes = select_examples(splits, list(spec.class_names), name, sampling, seed, where)
    if source is None:
        hub = HUB_SOURCES[name]
        source, split = hub_description(hub), f"Hub splits {hub.train_split}/{hub.test_split}"
    else:
        split = "seeded stratified 70/30 (split_seed)" if fmt == "lines" else "files"
    info: dict[str, Any] = {
        "source": source,
        "format": fmt,
        "domain": spec.domain,
        "shots": sampling.shots,
        **sizes,
        "split": split,
        "split_seed": sampling.split_seed,
        "label_words": list(spec.class_names),
    }
    if pair:
        info["input"] = "pair"
    return Task(
        name=name,
        train=train,
        test=scored,
        class_names=list(class_names) if class_names is not None else list(spec.class_names.values()),
        templates=list(templates) if templates is not None else list(spec.templates),
        metric="accuracy",
        info=info,
    )


def build_task(name: str, text_root: Path | None, config: TextMTILConfig, seed: int, hint: str = "") -> Task:
    """One task: load, map labels to ids, sample shots (run seed), validation and test sets (split_seed)."""
    return builtin_task(name, text_root, sampling=Sampling.of(config), seed=seed, hint=hint)


def build_scenario(config: TextMTILConfig, seed: int) -> list[Task]:
    """The configured task stream, in order."""
    text_root, hint = locate_data(config.root, config.source)
    return [build_task(name, text_root, config, seed, hint) for name in config.tasks]
