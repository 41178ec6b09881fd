"""TRACE-format continual instruction tuning streams: prompt/answer tasks scored on generations.

Two sources, one config (`TraceConfig.source`):

* ``"folder"``: your own TRACE-format data, ``<root>/<task>/{train,eval,test}.json``, each a JSON list
  of ``{"prompt": str, "answer": str}``; tasks run in the order listed. The test split falls back to
  ``eval.json`` when ``test.json`` is missing (recorded in ``task.info["test_split"]``).
* ``"shared-text"``: a real stream from ``shared/data/text``: TRACE FOMC as shipped, plus O-LoRA
  classification tasks and TREC turned into prompt/answer pairs by `SHARED_TEXT_PROMPTS`, e.g.

      What is the topic of this news article? Answer with one of: world news, sports, business,
      science and technology.
      Text: <article>
      Answer:

  (the input keeps its own leading ``Field: `` label when the data has one, e.g. ``Title:``)

  and the answer is the label word (``"sports"``). Label words are text-mtil's class names.

Caps subsample a task's examples: train with ``random.Random(f"{seed}/{task}/train")`` (the run
seed), test with ``random.Random(f"{test_seed}/{task}/test")`` so that every method and seed is scored
on the same items; kept examples stay in file order.

Metrics default by TRACE task name (`TRACE_METRICS`) to the official TRACE evaluation
(``rankwise.trace_scoring``; ``inference/collect_results.py`` picks one score per task): C-STANCE /
FOMC option letter + prefix rule, ScienceQA answer letter, NumGLUE-cm / -ds the Qwen2.5-Math number
parser, MeetingBank ROUGE-L of the ``rouge`` package, 20Minuten SARI, Py150 ``fuzz.ratio`` after
placeholder post-processing; other tasks use ``default_metric``.

Epochs: ``epochs`` (int or {task: int}) with ``examples_per_step`` (the effective batch) records, per
task, ``info["epochs"]`` and ``info["iterations"] = ceil(epochs * n_train / examples_per_step)``, the
optimizer steps those epochs take (TRACE's runner: `TRACE_EPOCHS`, 32 examples per step).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankwise import io
from rankwise.errors import ConfigError, DataError, choices
from rankwise.scenarios.readers import TASKS, load_cl_benchmark, load_trec, resolve_root
from rankwise.scenarios.text import check_validation
from rankwise.scoring import SCORERS
from rankwise.tasks import GenerationExample, Task

SOURCES = ("folder", "shared-text")

TRACE_METRICS: dict[str, str] = {
    "C-STANCE": "trace_choice_accuracy",
    "FOMC": "trace_choice_accuracy",
    "ScienceQA": "scienceqa_accuracy",
    "NumGLUE-cm": "numglue_accuracy",
    "NumGLUE-ds": "numglue_accuracy",
    "MeetingBank": "trace_rouge_l",
    "20Minuten": "sari",
    "Py150": "py150_similarity",
}
#: the official runner's task order and epochs per task (TRACE/runner_moram.sh: epochs="2,1,3,2,1,2,2,3")
TRACE_ORDER = (
    "C-STANCE",
    "FOMC",
    "MeetingBank",
    "Py150",
    "ScienceQA",
    "NumGLUE-cm",
    "NumGLUE-ds",
    "20Minuten",
)
TRACE_EPOCHS: dict[str, int] = dict(zip(TRACE_ORDER, (2, 1, 3, 2, 1, 2, 2, 3)))
TRACE_MAX_NEW_TOKENS: dict[str, int] = {
    "C-STANCE": 8,
    "FOMC": 8,
    "ScienceQA": 128,
    "NumGLUE-cm": 16,
    "NumGLUE-ds": 16,
    "MeetingBank": 256,
    "20Minuten": 256,
    "Py150": 64,
}

#: shared-text task -> (instruction, name of the input field); the label words come from text-mtil.
SHARED_TEXT_PROMPTS: dict[str, tuple[str, str]] = {
    "agnews": ("What is the topic of this news article?", "Text"),
    "dbpedia": ("What kind of entity is this Wikipedia article about?", "Text"),
    "yelp": ("How positive is this business review?", "Review"),
    "amazon": ("How positive is this product review?", "Review"),
    "sst2": ("What is the sentiment of this movie review?", "Review"),
    "imdb": ("What is the sentiment of this movie review?", "Review"),
    "trec": ("What type of thing does this question ask for?", "Question"),
}
SHARED_TEXT_TASKS = ("fomc", *SHARED_TEXT_PROMPTS)
DEFAULT_SHARED_TEXT_STREAM = ("fomc", "agnews", "trec", "sst2", "yelp")
SHARED_TEXT_MAX_NEW_TOKENS = 8


def shared_text_prompt(task: str, text: str, label_words: Sequence[str]) -> str:
    """The documented prompt of a shared-text classification task (see module docstring)."""
    instruction, field_name = SHARED_TEXT_PROMPTS[task]
    body = text if re.match(r"[A-Z][a-z]+: ", text) else f"{field_name}: {text}"  # keep the data's own field
    return f"{instruction} Answer with one of: {', '.join(label_words)}.\n{body}\nAnswer:"


# plain `dict` (not dict[str, int]) in annotations: the run-config reader checks isinstance against them
Cap = int | dict | None


@dataclass
class TraceConfig:
    """Options of the TRACE-format stream (source, task order, caps, metrics, generation lengths)."""

    source: str = field(default="folder", metadata={"help": f"where tasks come from: {', '.join(SOURCES)}"})
    root: str | None = field(
        default=None,
        metadata={
            "help": "folder: the folder holding <task>/ folders (required); shared-text: the data folder "
            "holding text/ (None = $RANKWISE_DATA, ./shared/data or ../shared/data)"
        },
    )
    tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "task order; folder: required; shared-text: any of "
            f"{list(SHARED_TEXT_TASKS)}, None = {list(DEFAULT_SHARED_TEXT_STREAM)}"
        },
    )
    max_train: Cap = field(
        default=None, metadata={"help": "train examples per task (int, or {task: int}); None = all"}
    )
    max_test: Cap = field(
        default=None, metadata={"help": "test examples per task (int, or {task: int}); None = all"}
    )
    metrics: dict = field(
        default_factory=dict, metadata={"help": "{task: metric} overriding TRACE defaults (a key of SCORERS)"}
    )
    default_metric: str = field(default="exact_match", metadata={"help": "metric of tasks without a default"})
    max_new_tokens: int | dict | None = field(
        default=None, metadata={"help": "generation length per task (int, or {task: int}); None = defaults"}
    )
    default_max_new_tokens: int = field(
        default=64, metadata={"help": "generation length of tasks without a default"}
    )
    train_split: str = field(default="train", metadata={"help": "file stem of the training split"})
    test_split: str = field(default="test", metadata={"help": "file stem of the test split"})
    fallback_test_split: str | None = field(
        default="eval", metadata={"help": "file stem used when the test split is missing (null = none)"}
    )
    test_seed: int = field(
        default=0, metadata={"help": "seed of the test and validation subsamples (fixed across run seeds)"}
    )
    validation_size: int | None = field(
        default=None,
        metadata={"help": "validation items per task, drawn from train before max_train (never trained on)"},
    )
    evaluate_on: str = field(
        default="test", metadata={"help": "held-out split scored: test, or validation (for tuning)"}
    )
    epochs: int | dict | None = field(
        default=None,
        metadata={
            "help": "epochs per task (int, or {task: int}); with examples_per_step each task trains "
            "ceil(epochs * n_train / examples_per_step) steps instead of train.iterations"
        },
    )
    examples_per_step: int | None = field(
        default=None, metadata={"help": "examples per optimizer step (batch x accumulation x devices)"}
    )

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError("scenario.source", self.source, choices(SOURCES))
        if self.source == "folder" and self.root is None:
            raise ConfigError(
                "scenario.root", None, "the folder holding your <task>/{train,test}.json folders"
            )
        if self.tasks is None:
            if self.source == "folder":
                raise ConfigError(
                    "scenario.tasks", None, "the ordered list of task folder names under scenario.root"
                )
            self.tasks = list(DEFAULT_SHARED_TEXT_STREAM)
        if isinstance(self.tasks, str) or not isinstance(self.tasks, Sequence) or not self.tasks:
            raise ConfigError("scenario.tasks", self.tasks, "a non-empty list of task names")
        self.tasks = [str(t) for t in self.tasks]
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("scenario.tasks", self.tasks, "each task at most once")
        if self.source == "shared-text":
            for name in self.tasks:
                if name not in SHARED_TEXT_TASKS:
                    raise ConfigError("scenario.tasks", name, choices(SHARED_TEXT_TASKS))
        if (self.epochs is None) != (self.examples_per_step is None):
            raise ConfigError(
                "scenario.epochs" if self.epochs is None else "scenario.examples_per_step",
                None,
                "set together with " + ("examples_per_step" if self.epochs is None else "epochs"),
            )
        eps = self.examples_per_step
        if eps is not None and (not isinstance(eps, int) or isinstance(eps, bool) or eps < 1):
            raise ConfigError("scenario.examples_per_step", eps, "an integer >= 1 or null")
        for name in ("max_train", "max_test", "max_new_tokens", "epochs"):
            _check_per_task(f"scenario.{name}", getattr(self, name), self.tasks)
        check_validation(self.validation_size, self.evaluate_on)
        if not isinstance(self.metrics, Mapping):
            raise ConfigError("scenario.metrics", self.metrics, "a mapping {task: metric}")
        for task, metric in {**self.metrics, "<default_metric>": self.default_metric}.items():
            if metric not in SCORERS:
                raise ConfigError(f"scenario.metrics.{task}", metric, choices(sorted(SCORERS)))
        unknown = sorted(set(self.metrics) - set(self.tasks))
        if unknown:
            raise ConfigError("scenario.metrics", unknown, f"metrics only for listed tasks {self.tasks}")
        if not isinstance(self.default_max_new_tokens, int) or self.default_max_new_tokens < 1:
            raise ConfigError(
                "scenario.default_max_new_tokens", self.default_max_new_tokens, "an integer >= 1"
            )

    def cap(self, name: str, task: str) -> int | None:
        value = getattr(self, name)
        return value.get(task) if isinstance(value, Mapping) else value

    def metric(self, task: str) -> str:
        if task in self.metrics:
            return self.metrics[task]
        if self.source == "shared-text":
            return "exact_match"
        return TRACE_METRICS.get(task, self.default_metric)

    def new_tokens(self, task: str) -> int:
        given = self.cap("max_new_tokens", task)
        if given is not None:
            return given
        if self.source == "shared-text":
            return SHARED_TEXT_MAX_NEW_TOKENS
        return TRACE_MAX_NEW_TOKENS.get(task, self.default_max_new_tokens)


def _check_per_task(name: str, value: Any, tasks: list[str]) -> None:
    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if value is None or ok(value):
        return
    if isinstance(value, Mapping):
        for task, v in value.items():
            if task not in tasks:
                raise ConfigError(f"{name}.{task}", v, f"entries only for listed tasks {tasks}")
            if not ok(v):
                raise ConfigError(f"{name}.{task}", v, "an integer >= 1")
        return
    raise ConfigError(name, value, "an integer >= 1, a mapping {task: integer}, or null")


# ---------------------------------------------------------------------------- folder source
def read_split(path: Path) -> list[GenerationExample]:
    """A TRACE split file: a JSON list of objects with string ``prompt`` and ``answer``."""
    data = io.read_json_list(path, "list of {'prompt', 'answer'} objects")
    examples = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "prompt" not in item or "answer" not in item:
            found = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise DataError(
                f"{path} item {i}: expected an object with keys 'prompt' and 'answer', found {found}"
            )
        for key in ("prompt", "answer"):
            if not isinstance(item[key], str):
                raise DataError(f"{path} item {i}: {key!r} must be a string, found {type(item[key]).__name__}")
        examples.append(GenerationExample(item["prompt"], item["answer"]))
    return examples


def _load_folder_task(root: Path, task: str, config: TraceConfig) -> tuple[dict[str, list], dict[str, Any]]:
    folder = root / task
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DataError(
            f"task folder {folder} does not exist (scenario.tasks entry {task!r}); found: {present}"
        )
    train_path = folder / f"{config.train_split}.json"
    if not train_path.is_file():
        raise DataError(f"task {task!r}: missing train split {train_path}")
    test_split = config.test_split
    if not (folder / f"{test_split}.json").is_file():
        fallback = config.fallback_test_split
        if fallback is None or not (folder / f"{fallback}.json").is_file():
            tried = [test_split] + ([fallback] if fallback else [])
            raise DataError(
                f"task {task!r}: no test split in {folder} (tried {', '.join(t + '.json' for t in tried)})"
            )
        test_split = fallback
    splits = {"train": read_split(train_path), "test": read_split(folder / f"{test_split}.json")}
    return splits, {"source": str(folder), "train_split": config.train_split, "test_split": test_split}


# ---------------------------------------------------------------------------- shared-text source
def _load_shared_text_task(task: str, config: TraceConfig) -> tuple[dict[str, list], dict[str, Any]]:
    text_root = resolve_root(config.root)
    if task == "fomc":
        splits, info = _load_folder_task(text_root / "trace", "FOMC", config)
        return splits, {**info, "template": "TRACE FOMC prompt as shipped"}
    spec = TASKS[task]
    folder = text_root / spec.folder
    raw = load_trec(folder) if spec.fmt == "trec" else load_cl_benchmark(folder)
    words = list(spec.class_names.values())
    splits = {
        split: [
            GenerationExample(shared_text_prompt(task, text, words), spec.class_names[label])
            for text, label in pairs
        ]
        for split, pairs in raw.items()
    }
    template = shared_text_prompt(task, "{text}", words)
    return splits, {"source": str(folder), "train_split": "train", "test_split": "test", "template": template}


# ---------------------------------------------------------------------------- stream
def subsample(examples: list, cap: int | None, rng: random.Random) -> list:
    """At most ``cap`` examples drawn by ``rng``, kept in their original order."""
    if cap is None or cap >= len(examples):
        return list(examples)
    keep = sorted(rng.sample(range(len(examples)), cap))
    return [examples[i] for i in keep]


def build_task(name: str, config: TraceConfig, seed: int) -> Task:
    if config.source == "folder":
        splits, info = _load_folder_task(Path(config.root).expanduser(), name, config)  # type: ignore[arg-type]
    else:
        splits, info = _load_shared_text_task(name, config)
    for split, examples in splits.items():
        if not examples:
            raise DataError(f"task {name!r}: the {info[split + '_split']} split is empty ({info['source']})")
    pool = splits["train"]
    validation: list = []
    if config.validation_size is not None:  # held out first, so no run seed ever trains on it
        if config.validation_size >= len(pool):
            raise ConfigError(
                "scenario.validation_size", config.validation_size,
                f"fewer than the {len(pool)} train examples of task {name!r} ({info['source']})",
            )  # fmt: skip
        rng = random.Random(f"{config.test_seed}/{name}/validation")
        held = set(rng.sample(range(len(pool)), config.validation_size))
        validation = [e for i, e in enumerate(pool) if i in held]
        pool = [e for i, e in enumerate(pool) if i not in held]
    train = subsample(pool, config.cap("max_train", name), random.Random(f"{seed}/{name}/train"))
    test = subsample(
        splits["test"], config.cap("max_test", name), random.Random(f"{config.test_seed}/{name}/test")
    )
    info.update(
        n_train=len(train),
        n_test=len(test),
        n_train_available=len(splits["train"]),
        n_test_available=len(splits["test"]),
    )
    if config.validation_size is not None:
        info.update(n_validation=len(validation), evaluated_split=config.evaluate_on)
        test = validation if config.evaluate_on == "validation" else test
    epochs = config.cap("epochs", name)
    if epochs is not None and config.examples_per_step is not None:
        info.update(epochs=epochs, iterations=math.ceil(epochs * len(train) / config.examples_per_step))
    return Task(
        name=name,
        train=train,
        test=test,
        metric=config.metric(name),
        max_new_tokens=config.new_tokens(name),
        info=info,
    )


def build_scenario(config: TraceConfig, seed: int) -> list[Task]:
    """The tasks of `config`, in the configured order."""
    return [build_task(name, config, seed) for name in config.tasks or []]
