"""text-mtil: a stream of real text classification tasks from ``shared/data/text``.

Each task is classified CLIP-style: one natural-language class name per label word, slotted into
task-specific prompt templates. Three on-disk formats are read (see ``shared/data/README.md``):
O-LoRA ``cl_benchmark`` JSON, SentEval-style line files, and TRACE prompt/answer JSON (FOMC).

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

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rankwise import io
from rankwise.errors import ConfigError, DataError, choices, short_repr
from rankwise.tasks import ClassificationExample, Task

Pairs = list[tuple[str, str]]  # (text, raw label word)


@dataclass(frozen=True)
class TextTaskSpec:
    """Where a task lives, how its raw labels become natural class names, and its prompts."""

    folder: str  # relative to <root>/text
    fmt: str  # "cl_benchmark" | "trec" | "lines" | "fomc"
    class_names: dict[str, str]  # raw label word -> class name, in label-id order
    templates: tuple[str, ...]
    domain: str
    files: dict[str, str] = field(default_factory=dict)  # "lines": raw label -> file name


# fmt: off
_STARS = {w: w for w in ("very negative", "negative", "neutral", "positive", "very positive")}
_GOOD_BAD = {"Good": "positive", "Bad": "negative"}
_POS_NEG = {"neg": "negative", "pos": "positive"}

TASKS: dict[str, TextTaskSpec] = {
    "agnews": TextTaskSpec(
        "cl_benchmark/agnews", "cl_benchmark",
        {"World": "world news", "Sports": "sports", "Business": "business",
         "Science or Technology": "science and technology"},
        ("A news article about {}.", "This text is about {}."), "news topic"),
    "yelp": TextTaskSpec(
        "cl_benchmark/yelp", "cl_benchmark", _STARS,
        ("A {} review of a business.", "This review is {}."), "business-review sentiment (1-5 stars)"),
    "amazon": TextTaskSpec(
        "cl_benchmark/amazon", "cl_benchmark", _STARS,
        ("A {} product review.", "This review is {}."), "product-review sentiment (1-5 stars)"),
    "dbpedia": TextTaskSpec(
        "cl_benchmark/dbpedia", "cl_benchmark",
        {"Company": "company", "Educational Institution": "educational institution", "Artist": "artist",
         "Athlete": "athlete", "Office Holder": "office holder", "Mean of Transportation": "means of transportation",
         "Building": "building", "Natural Place": "natural place", "Village": "village", "Animal": "animal",
         "Plant": "plant", "Album": "album", "Film": "film", "Written Work": "written work"},
        ("A Wikipedia article about a {}.", "This text is about a {}."), "Wikipedia entity type"),
    "sst2": TextTaskSpec(
        "cl_benchmark/sst2", "cl_benchmark", _GOOD_BAD,
        ("A {} movie review.", "The sentiment is {}."), "movie-review sentiment"),
    "imdb": TextTaskSpec(
        "cl_benchmark/imdb", "cl_benchmark", _GOOD_BAD,
        ("A {} movie review.", "The sentiment is {}."), "movie-review sentiment"),
    "trec": TextTaskSpec(
        "sentence_classification/trec", "trec",
        {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
         "LOC": "location", "NUM": "number"},
        ("A question asking for a {}.", "The answer to this question is a {}."), "question type"),
    "subj": TextTaskSpec(
        "sentence_classification/subj", "lines", {"objective": "objective", "subjective": "subjective"},
        ("A {} sentence.", "This statement is {}."), "subjectivity",
        files={"objective": "subj.objective", "subjective": "subj.subjective"}),
    "mpqa": TextTaskSpec(
        "sentence_classification/mpqa", "lines", _POS_NEG,
        ("A {} opinion.", "The sentiment is {}."), "opinion polarity (phrases)",
        files={"neg": "mpqa.neg", "pos": "mpqa.pos"}),
    "mr": TextTaskSpec(
        "sentence_classification/mr", "lines", _POS_NEG,
        ("A {} movie review.", "The sentiment is {}."), "movie-review sentiment",
        files={"neg": "rt-polarity.neg", "pos": "rt-polarity.pos"}),
    "cr": TextTaskSpec(
        "sentence_classification/cr", "lines", _POS_NEG,
        ("A {} product review.", "The sentiment is {}."), "product-review sentiment",
        files={"neg": "custrev.neg", "pos": "custrev.pos"}),
    "fomc": TextTaskSpec(
        "trace/FOMC", "fomc", {"dovish": "dovish", "hawkish": "hawkish", "neutral": "neutral"},
        ("The monetary policy stance is {}.", "A {} statement about monetary policy."),
        "monetary-policy stance (finance)"),
}
# fmt: on

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


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The ``text/`` folder, by the documented resolution order; a clear error when none exists."""
    tried: list[str] = []
    if root is not None:
        candidates = [("scenario.root", Path(root))]
    elif os.environ.get("RANKWISE_DATA"):
        candidates = [("RANKWISE_DATA", Path(os.environ["RANKWISE_DATA"]))]
    else:
        candidates = [
            ("default", Path.cwd() / "shared" / "data"),
            ("default", Path.cwd().parent / "shared" / "data"),
        ]
    for source, path in candidates:
        tried.append(f"{path} ({source})")
        if (path / "text").is_dir():
            return path / "text"
        if (path / "cl_benchmark").is_dir() or (path / "sentence_classification").is_dir():
            return path
    raise DataError(
        "text-mtil data not found; looked for a folder holding text/ at: "
        + "; ".join(tried)
        + ". Set scenario.root or the RANKWISE_DATA environment variable to the data folder."
    )


# -- loaders: each returns {"train": pairs, "test": pairs} of (text, raw label) -----------------
def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing {what}: {path}")
    return path


def _records(path: Path, text_key: str, label_key: str) -> Pairs:
    """(text, label) of every object in a JSON list; the text must be a string, the label a string or int.

    A null, list, dict or number where the text belongs is refused naming the file, the item and the key
    (read as ``str(...)`` it would silently become the text "None" or "[1, 2]").
    """
    pairs = []
    for i, item in enumerate(io.read_json_list(path)):
        if not isinstance(item, dict) or text_key not in item or label_key not in item:
            raise DataError(f"{path} item {i}: expected an object with keys {text_key!r} and {label_key!r}")
        text, label = item[text_key], item[label_key]
        if not isinstance(text, str):
            raise DataError(
                f"{path} item {i}: {text_key!r} is {short_repr(text, 60)} ({type(text).__name__}); expected a string"
            )
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(
                f"{path} item {i}: {label_key!r} is {short_repr(label, 60)} ({type(label).__name__}); "
                "expected a string (or an integer)"
            )
        pairs.append((text, str(label)))
    return pairs


def load_cl_benchmark(folder: Path) -> dict[str, Pairs]:
    """O-LoRA format: ``{train,test}.json`` lists of {label, sentence}; labels checked against labels.json."""
    labels = io.read_json_list(_need(folder / "labels.json", "label list"))
    splits = {
        s: _records(_need(folder / f"{s}.json", f"{s} split"), "sentence", "label") for s in ("train", "test")
    }
    for split, pairs in splits.items():
        for i, (_, label) in enumerate(pairs):
            if label not in labels:
                raise DataError(
                    f"{folder / (split + '.json')} item {i}: label {label!r} is not in labels.json {labels}"
                )
    return splits


def _trec_file(path: Path) -> Pairs:
    pairs = []
    for i, line in enumerate(path.read_text(encoding="latin-1").splitlines()):
        if not line.strip():
            continue
        head, _, text = line.partition(" ")
        if ":" not in head or not text:
            raise DataError(f"{path} line {i + 1}: expected 'COARSE:fine question', got {line[:60]!r}")
        pairs.append((text.strip(), head.split(":", 1)[0]))
    return pairs


def load_trec(folder: Path) -> dict[str, Pairs]:
    """TREC (Latin-1): ``COARSE:fine question`` lines; the coarse label is the class."""
    return {
        "train": _trec_file(_need(folder / "train_5500.label", "train split")),
        "test": _trec_file(_need(folder / "TREC_10.label", "test split")),
    }


FOMC_MARKERS = ("\nText:\n", "\nDocument:\n")  # train.json uses Text:, test.json Document:


def _fomc_sentence(prompt: str, path: Path, i: int) -> str:
    end = prompt.rfind("\nStance:")
    for marker in FOMC_MARKERS:
        start = prompt.find(marker)
        if 0 <= start < end:
            return prompt[start + len(marker) : end].strip()
    raise DataError(
        f"{path} item {i}: prompt is not 'instruction\\nText: (or Document:)\\n<sentence>\\nStance:'"
    )


def load_fomc(folder: Path) -> dict[str, Pairs]:
    """TRACE FOMC: the sentence between ``Text:``/``Document:`` and ``Stance:``; the answer is the label."""
    out = {}
    for split in ("train", "test"):
        path = _need(folder / f"{split}.json", f"{split} split")
        out[split] = [
            (_fomc_sentence(p, path, i), a.strip())
            for i, (p, a) in enumerate(_records(path, "prompt", "answer"))
        ]
    return out


def load_lines(folder: Path, files: dict[str, str], split_seed: int) -> dict[str, Pairs]:
    """SentEval one-file-per-class data without a split: seeded, stratified 70/30 (see module doc)."""
    splits: dict[str, Pairs] = {"train": [], "test": []}
    for label in sorted(files):
        path = _need(folder / files[label], f"file of class {label!r}")
        lines = [ln.strip() for ln in path.read_text(encoding="latin-1").splitlines() if ln.strip()]
        order = list(range(len(lines)))
        random.Random(f"{split_seed}:{label}").shuffle(order)
        test_ids = set(order[: round(0.3 * len(lines))])
        for i, text in enumerate(lines):
            splits["test" if i in test_ids else "train"].append((text, label))
    return splits


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


def _load(spec: TextTaskSpec, folder: Path, split_seed: int) -> dict[str, Pairs]:
    loaders: dict[str, Callable[[], dict[str, Pairs]]] = {
        "cl_benchmark": lambda: load_cl_benchmark(folder),
        "trec": lambda: load_trec(folder),
        "fomc": lambda: load_fomc(folder),
        "lines": lambda: load_lines(folder, spec.files, split_seed),
    }
    return loaders[spec.fmt]()


def build_task(name: str, text_root: Path, config: TextMTILConfig, seed: int) -> Task:
    """One task: load, map labels to ids, sample shots (run seed) and the test set (split_seed)."""
    spec = TASKS[name]
    folder = text_root / spec.folder
    if not folder.is_dir():
        raise DataError(
            f"text-mtil task {name!r}: folder {folder} does not exist (data root {text_root.parent})"
        )
    splits = _load(spec, folder, config.split_seed)
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
