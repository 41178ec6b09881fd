"""The shared text data sets (``shared/data/text``): where each lives, its label words, and readers.

text-mtil (`rankwise.scenarios.text`) classifies them CLIP-style; TRACE (`rankwise.scenarios.trace`)
turns the same sets into generation tasks. Three on-disk formats are read (see ``shared/data/README.md``):
O-LoRA ``cl_benchmark`` JSON, SentEval-style line files (TREC's ``COARSE:fine`` lines among them) and
TRACE prompt/answer JSON (FOMC). Each loader returns ``{"train": pairs, "test": pairs}`` of
(text, raw label word).

Data root, first match wins: the config's ``root``; the environment variable ``RANKWISE_DATA``;
``./shared/data`` then ``../shared/data`` relative to the working directory. The root is the folder
that holds ``text/`` (a path to ``text/`` itself is accepted too).

Line files without a split (MR, CR, SUBJ, MPQA): each class's lines are shuffled with
``random.Random(f"{split_seed}:{label}")`` and the first ``round(0.3 * n_class)`` become test, the
rest train, both kept in file order.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rankwise import io
from rankwise.errors import DataError, short_repr

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


def load_splits(spec: TextTaskSpec, folder: Path, split_seed: int) -> dict[str, Pairs]:
    """The {"train", "test"} pairs of one data set, by its format."""
    loaders: dict[str, Callable[[], dict[str, Pairs]]] = {
        "cl_benchmark": lambda: load_cl_benchmark(folder),
        "trec": lambda: load_trec(folder),
        "fomc": lambda: load_fomc(folder),
        "lines": lambda: load_lines(folder, spec.files, split_seed),
    }
    return loaders[spec.fmt]()
