"""text-classification: a stream of your own text classification tasks, configured in YAML alone.

Each task names where its data is and how to read it (`TextTaskConfig`)::

    scenario:
      name: text-classification
      tasks:
        - {name: billing, source: data/billing.jsonl}              # columns "text" and "label"
        - {name: nli, source: data/nli.csv, text: [premise, hypothesis], class_names: [yes, maybe, no]}
        - {name: news, source: fancyzhx/ag_news, test_split: test}  # a Hugging Face dataset
        - {preset: rte}                                             # a built-in task (text-mtil's, pairs)

* Sources: a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet`` file (relative paths from the
  working directory), or a Hugging Face dataset name or local folder read with
  ``datasets.load_dataset`` (`rankwise.scenarios.text_sources`).
* Inputs: one text column, or two for a sentence pair. A pair stays a pair ``(text_a, text_b)`` unless
  ``pair_template`` (with ``{text_a}`` and ``{text_b}``) joins it into one string; a backbone that
  cannot encode pairs refuses the task by name.
* Labels: the ``label`` column (strings or integers). ``class_names`` maps them to the names slotted
  into the prompts: a mapping ``{raw label: class name}`` (label ids in its order), or a list of
  names (a raw label equal to a name is that class; an integer label i is class i). Without it the
  class names are the labels themselves (a Hub ClassLabel column: its names), sorted.
* Splits: ``test_source`` (a file) or ``test_split`` (a Hub split); with neither, a seeded stratified
  split keeps ``test_fraction`` of each label for test (``random.Random(f"{split_seed}:{name}:{label}")``).
  Then, as in text-mtil: ``shots`` per class with the run seed, a stratified ``test_size`` sample with
  ``split_seed`` (`rankwise.scenarios.text.select_examples`).
* Presets: ``preset: agnews`` (any of `rankwise.scenarios.text.PRESETS`) builds the built-in task
  exactly as text-mtil does (same examples, order, class names, templates); ``class_names`` and
  ``templates`` may replace its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rankwise.config_types import build_dataclass
from rankwise.errors import ConfigError, DataError, choices
from rankwise.scenarios.text import (
    PRESETS,
    Sampling,
    builtin_task,
    check_sampling,
    locate_data,
    select_examples,
)
from rankwise.scenarios.text_sources import (
    FORMATS,
    Example,
    examples_from_rows,
    load_hub_rows,
    read_file_rows,
    seeded_split,
    source_format,
)
from rankwise.tasks import Task


def _check_template(value: Any, field_name: str) -> None:
    if not isinstance(value, str) or "{}" not in value:
        raise ConfigError(field_name, value, "a string with a '{}' placeholder for the class name")


@dataclass
class TextTaskConfig:
    """One task of a text-classification stream: data source, columns, labels, prompts, split."""

    name: str | None = field(default=None, metadata={"help": "task name (unique); default: the preset"})
    preset: str | None = field(default=None, metadata={"help": f"a built-in task: {', '.join(PRESETS)}"})
    source: str | None = field(
        default=None,
        metadata={"help": "a .jsonl/.json/.csv/.tsv/.parquet file, or a Hugging Face dataset name or folder"},
    )
    format: str = field(
        default="auto", metadata={"help": f"reader: {', '.join(FORMATS)} (auto: by extension)"}
    )
    subset: str | None = field(default=None, metadata={"help": "Hugging Face dataset config name (e.g. rte)"})
    train_split: str = field(default="train", metadata={"help": "Hugging Face split to train on"})
    test_split: str | None = field(
        default=None,
        metadata={"help": "Hugging Face split to test on; null: a seeded split of the train split"},
    )
    test_source: str | None = field(
        default=None, metadata={"help": "a test file (same format); null: a seeded split of source"}
    )
    text: str | list = field(
        default="text", metadata={"help": "text column, or [column_a, column_b] for a sentence pair"}
    )
    pair_template: str | None = field(
        default=None,
        metadata={
            "help": "joins a pair into one string, e.g. '{text_a} Question: {text_b}'; null keeps pairs"
        },
    )
    label: str = field(default="label", metadata={"help": "label column"})
    class_names: list | dict | None = field(
        default=None,
        metadata={
            "help": "{raw label: class name} or [class name, ...] (integer label i = name i); null: labels"
        },
    )
    templates: list[str] | None = field(
        default=None,
        metadata={"help": "prompt templates with '{}' for the class name; null: ['{}'] (preset: its own)"},
    )
    test_fraction: float = field(
        default=0.3, metadata={"help": "share of each label held out when there is no test split"}
    )

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError("preset", self.preset, choices(PRESETS))
        if self.preset is None and self.source is None:
            raise ConfigError("source", None, "a data file or Hugging Face dataset (or a preset)")
        if self.preset is not None and self.source is not None:
            raise ConfigError("source", self.source, "null with a preset (the preset knows its data)")
        self.name = self.name if self.name is not None else self.preset
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", self.name, "a non-empty task name")
        if self.format not in FORMATS:
            raise ConfigError("format", self.format, choices(FORMATS))
        columns = [self.text] if isinstance(self.text, str) else self.text
        if not (1 <= len(columns) <= 2) or not all(isinstance(c, str) and c for c in columns):
            raise ConfigError("text", self.text, "a column name, or a list of two (a sentence pair)")
        if self.pair_template is not None and (
            len(columns) != 2 or "{text_a}" not in self.pair_template or "{text_b}" not in self.pair_template
        ):
            raise ConfigError(
                "pair_template",
                self.pair_template,
                "a string with {text_a} and {text_b}, with two text columns",
            )
        if self.class_names is not None:
            self._check_class_names()
        if self.templates is not None:
            if isinstance(self.templates, str) or not self.templates:
                raise ConfigError("templates", self.templates, "a non-empty list of templates")
            for t in self.templates:
                _check_template(t, "templates")
        if not isinstance(self.test_fraction, float) or not 0 < self.test_fraction < 1:
            raise ConfigError("test_fraction", self.test_fraction, "a number between 0 and 1")

    def _check_class_names(self) -> None:
        names = list(self.class_names.values()) if isinstance(self.class_names, dict) else self.class_names
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(
                "class_names", self.class_names, "a non-empty list or mapping of class-name strings"
            )
        if isinstance(self.class_names, dict):
            if any(isinstance(k, bool) or not isinstance(k, (str, int)) for k in self.class_names):
                raise ConfigError(
                    "class_names", self.class_names, "keys that are raw labels (strings or integers)"
                )
            self.class_names = {str(k): v for k, v in self.class_names.items()}

    @property
    def columns(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)


@dataclass
class TextClassificationConfig:
    """Options of the text-classification stream: the tasks in order, shots, test sample, seeds."""

    tasks: list = field(
        default_factory=list,
        metadata={"help": "task order: each a mapping of TextTaskConfig keys, or a preset name"},
    )
    shots: int | None = field(
        default=None, metadata={"help": "train examples per class (seeded), None = all"}
    )
    test_size: int | None = field(
        default=None, metadata={"help": "stratified test items per task (fixed by split_seed), None = all"}
    )
    split_seed: int = field(
        default=0, metadata={"help": "seed of the held-out splits and of the validation and test samples"}
    )
    validation_size: int | None = field(
        default=None,
        metadata={"help": "stratified validation items per task, carved out of train (never trained on)"},
    )
    evaluate_on: str = field(
        default="test", metadata={"help": "held-out split scored: test, or validation (for tuning)"}
    )
    root: str | None = field(
        default=None,
        metadata={"help": "presets: folder holding text/ (as text-mtil's root; else their Hub copy)"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.tasks, (str, dict)) or not isinstance(self.tasks, Sequence) or not self.tasks:
            raise ConfigError(
                "scenario.tasks", self.tasks, "a non-empty list of tasks (mappings or preset names)"
            )
        built = []
        for i, item in enumerate(self.tasks):
            if isinstance(item, str):
                item = {"preset": item}
            if isinstance(item, TextTaskConfig):
                built.append(item)
                continue
            built.append(build_dataclass(TextTaskConfig, item, f"scenario.tasks[{i}]"))
        names = [t.name for t in built]
        if len(set(names)) != len(names):
            raise ConfigError("scenario.tasks", names, "each task name at most once")
        self.tasks = built
        check_sampling(self.shots, self.test_size, self.split_seed, self.validation_size, self.evaluate_on)


# -- reading one task ---------------------------------------------------------------------------
def _hub_hint(task: TextTaskConfig) -> str:
    return (
        f"task {task.name!r}: if offline, run once online (datasets caches it) or point source at local "
        "files (a .jsonl/.csv/.parquet file or a datasets folder)"
    )


def _read_split(
    task: TextTaskConfig, source: str, split: str | None
) -> tuple[list[Example], dict[str, list[str]]]:
    fmt = source_format(source, task.format)
    if fmt == "hf":
        rows, label_names = load_hub_rows(
            source, task.subset, split or task.train_split, [*task.columns, task.label], _hub_hint(task)
        )
        where = f"task {task.name!r}: {source} split {split or task.train_split!r}"
    else:
        rows, label_names = read_file_rows(source, fmt), {}
        where = f"task {task.name!r}: {source}"
    if not rows:
        raise DataError(f"{where} has no rows")
    return examples_from_rows(rows, task.columns, task.label, task.pair_template, where), label_names


def read_task_splits(
    task: TextTaskConfig, split_seed: int
) -> tuple[dict[str, list[Example]], list[str], str]:
    """{"train", "test"} examples, the ClassLabel names of the label column (if any), and the split rule."""
    assert task.source is not None
    train, names = _read_split(task, task.source, None)
    if task.test_source is not None:
        test, _ = _read_split(task, task.test_source, None)
        return {"train": train, "test": test}, names.get(task.label, []), "files"
    if task.test_split is not None and source_format(task.source, task.format) == "hf":
        test, _ = _read_split(task, task.source, task.test_split)
        return (
            {"train": train, "test": test},
            names.get(task.label, []),
            f"Hub splits {task.train_split}/{task.test_split}",
        )
    rule = f"seeded stratified {1 - task.test_fraction:.0%}/{task.test_fraction:.0%} (split_seed)"
    return (
        seeded_split(train, task.test_fraction, f"{split_seed}:{task.name}"),
        names.get(task.label, []),
        rule,
    )


def label_table(
    task: TextTaskConfig, splits: dict[str, list[Example]], hub_names: list[str]
) -> tuple[list[str], list[str]]:
    """(raw label of each class id, class name of each id) from ``class_names`` or the data (module doc)."""
    seen = {label for _, label in splits["train"]}
    numeric = all(label.lstrip("-").isdigit() for label in seen)
    raw = sorted(seen, key=int) if numeric else sorted(seen)  # 2 before 10 when labels are integers
    names = task.class_names
    if isinstance(names, dict):
        return list(names), list(names.values())
    if names is None:
        if hub_names:
            return [str(i) for i in range(len(hub_names))], list(hub_names)
        return raw, raw
    # a list: a label equal to a name is that class; an integer label i is class i
    if all(label in names for label in raw):
        return list(names), list(names)
    return [str(i) for i in range(len(names))], list(names)


def build_text_task(task: TextTaskConfig, config: TextClassificationConfig, seed: int) -> Task:
    """One task of the stream (a preset through `rankwise.scenarios.text.builtin_task`)."""
    if task.preset is not None:
        text_root, hint = locate_data(config.root, "auto")
        built = builtin_task(
            task.preset, text_root, sampling=Sampling.of(config), seed=seed, hint=hint, templates=task.templates
        )
        if task.class_names is not None:
            names = (
                list(task.class_names.values()) if isinstance(task.class_names, dict) else task.class_names
            )
            if len(names) != len(built.class_names):
                raise ConfigError(
                    f"scenario.tasks[{task.name}].class_names", task.class_names,
                    f"{len(built.class_names)} names in label-id order ({built.info['label_words']})",
                )  # fmt: skip
            built.class_names = list(names)
        built.name = task.name or built.name
        return built
    assert task.source is not None  # TextTaskConfig: a source or a preset
    splits, hub_names, split_rule = read_task_splits(task, config.split_seed)
    raw_labels, class_names = label_table(task, splits, hub_names)
    train, scored, sizes = select_examples(
        splits, raw_labels, task.name or "", Sampling.of(config), seed, f"task {task.name!r} ({task.source})"
    )
    pair = len(task.columns) == 2 and task.pair_template is None
    fmt = source_format(task.source, task.format)
    return Task(
        name=task.name or "",
        train=train,
        test=scored,
        class_names=class_names,
        templates=list(task.templates) if task.templates is not None else ["{}"],
        metric="accuracy",
        info={
            "source": task.source if fmt == "hf" else os.path.abspath(task.source),
            "format": fmt,
            "input": "pair" if pair else "text",
            "text_columns": task.columns,
            "pair_template": task.pair_template,
            "shots": config.shots,
            **sizes,
            "split": split_rule,
            "split_seed": config.split_seed,
            "label_words": raw_labels,
        },
    )


def build_scenario(config: TextClassificationConfig, seed: int) -> list[Task]:
    """The configured task stream, in order."""
    return [build_text_task(task, config, seed) for task in config.tasks]
