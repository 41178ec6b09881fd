"""Built-in text tasks beyond text-mtil's table: sentence-pair presets, and public Hub copies of all.

* `PAIR_TASKS`: O-LoRA ``cl_benchmark`` pair tasks (RTE, MNLI, CB, QQP, BoolQ). The data files hold both
  parts in one ``sentence`` field (``"sentence 1: A\\nsentence 2: B"``); the preset splits them at
  the markers so that the task is scored as a pair ``(A, B)``, never as the concatenated string.
* `HUB_SOURCES`: where each built-in task lives on the Hugging Face Hub, read with
  ``datasets.load_dataset`` when no local ``shared/data`` copy is found (text-mtil's ``source:
  auto``). The Hub copies are the public data sets, not the capped subsamples of ``shared/data``:
  other items, other sizes, the data set's own split (the labelled validation split where the
  test labels are hidden). Integer labels map to the local data's label words by `label_words`.
  AMAZON and MPQA have no entry (no public copy with the same classes was verified): without local
  files they stop with an error that says how to point at them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rankwise import io
from rankwise.errors import DataError
from rankwise.scenarios.text_sources import Example, load_hub_rows, split_marked_pair


@dataclass(frozen=True)
class PairTaskSpec:
    """A cl_benchmark pair task: folder (under text/), the two part markers, class names, prompts."""

    folder: str
    markers: tuple[str, str]
    class_names: dict[str, str]  # raw label word -> class name, in label-id order (labels.json's)
    templates: tuple[str, ...]
    domain: str


_SENTENCES = ("sentence 1: ", "\nsentence 2: ")
_NLI_TEMPLATES = ("The second sentence is {} by the first.", "The hypothesis is {} by the premise.")

# fmt: off
PAIR_TASKS: dict[str, PairTaskSpec] = {
    "rte": PairTaskSpec("cl_benchmark/rte", _SENTENCES,
                        {"contradiction": "not entailed", "entailment": "entailed"},
                        _NLI_TEMPLATES, "textual entailment (pair)"),
    "mnli": PairTaskSpec("cl_benchmark/mnli", _SENTENCES,
                         {"neutral": "neither entailed nor contradicted", "entailment": "entailed",
                          "contradiction": "contradicted"},
                         _NLI_TEMPLATES, "natural language inference (pair)"),
    "cb": PairTaskSpec("cl_benchmark/cb", _SENTENCES,
                       {"entailment": "entailed", "contradiction": "contradicted",
                        "neutral": "neither entailed nor contradicted"},
                       _NLI_TEMPLATES, "natural language inference, CommitmentBank (pair)"),
    "qqp": PairTaskSpec("cl_benchmark/qqp", ("first sentence: ", "\nsecond sentence: "),
                        {"False": "different questions", "True": "the same question"},
                        ("The two questions ask {}.", "These are {}."), "question-pair paraphrase (pair)"),
    "boolq": PairTaskSpec("cl_benchmark/boolq", ("question: ", "\npassage: "),
                          {"True": "yes", "False": "no"},
                          ("The answer to the question is {}.", "{}."), "yes/no reading comprehension (pair)"),
}
# fmt: on


def load_pair_task(name: str, folder: Path) -> dict[str, list[Example]]:
    """{"train", "test"} of a cl_benchmark pair task as ``((text_a, text_b), label word)``."""
    spec = PAIR_TASKS[name]
    labels = io.read_json_list(folder / "labels.json") if (folder / "labels.json").is_file() else None
    out = {}
    for split in ("train", "test"):
        path = folder / f"{split}.json"
        if not path.is_file():
            raise DataError(f"missing {split} split: {path}")
        examples = []
        for i, item in enumerate(io.read_json_list(path)):
            if not isinstance(item, dict) or not isinstance(item.get("sentence"), str) or "label" not in item:
                raise DataError(f"{path} item {i}: expected an object with a string 'sentence' and a 'label'")
            label = str(item["label"])
            if labels is not None and label not in labels:
                raise DataError(f"{path} item {i}: label {label!r} is not in labels.json {labels}")
            examples.append((split_marked_pair(item["sentence"], spec.markers, f"{path} item {i}"), label))
        out[split] = examples
    return out


@dataclass(frozen=True)
class HubSource:
    """A public Hugging Face copy of a built-in task: dataset, columns, label words by integer id."""

    name: str
    subset: str | None
    text: tuple[str, ...]  # one column, or two (a pair task, or `join` makes them one string)
    label: str
    label_words: tuple[str, ...]  # the local data's raw label word of Hub label id 0, 1, ...
    test_split: str = "test"
    train_split: str = "train"
    join: str | None = None  # format of two columns joined into one input ({text_a}, {text_b})


_STARS = ("very negative", "negative", "neutral", "positive", "very positive")
_DBPEDIA = (
    "Company", "Educational Institution", "Artist", "Athlete", "Office Holder", "Mean of Transportation",
    "Building", "Natural Place", "Village", "Animal", "Plant", "Album", "Film", "Written Work",
)  # fmt: skip

# fmt: off
HUB_SOURCES: dict[str, HubSource] = {
    "agnews": HubSource("fancyzhx/ag_news", None, ("text",), "label",
                        ("World", "Sports", "Business", "Science or Technology")),
    "yelp": HubSource("Yelp/yelp_review_full", None, ("text",), "label", _STARS),
    "dbpedia": HubSource("fancyzhx/dbpedia_14", None, ("title", "content"), "label", _DBPEDIA,
                         join="Title: {text_a}\nText: {text_b}"),  # the cl_benchmark form of an item
    "sst2": HubSource("stanfordnlp/sst2", None, ("sentence",), "label", ("Bad", "Good"), test_split="validation"),
    "imdb": HubSource("stanfordnlp/imdb", None, ("text",), "label", ("Bad", "Good")),
    "trec": HubSource("CogComp/trec", None, ("text",), "coarse_label", ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")),
    "subj": HubSource("SetFit/subj", None, ("text",), "label", ("objective", "subjective")),
    "mr": HubSource("cornell-movie-review-data/rotten_tomatoes", None, ("text",), "label", ("neg", "pos")),
    "cr": HubSource("SetFit/SentEval-CR", None, ("text",), "label", ("neg", "pos")),
    "fomc": HubSource("gtfintechlab/fomc_communication", None, ("sentence",), "label",
                      ("dovish", "hawkish", "neutral")),
    "rte": HubSource("nyu-mll/glue", "rte", ("sentence1", "sentence2"), "label",
                     ("entailment", "contradiction"), test_split="validation"),
    "mnli": HubSource("nyu-mll/glue", "mnli", ("premise", "hypothesis"), "label",
                      ("entailment", "neutral", "contradiction"), test_split="validation_matched"),
    "qqp": HubSource("nyu-mll/glue", "qqp", ("question1", "question2"), "label", ("False", "True"),
                     test_split="validation"),
    "cb": HubSource("aps/super_glue", "cb", ("premise", "hypothesis"), "label",
                    ("entailment", "contradiction", "neutral"), test_split="validation"),
    "boolq": HubSource("aps/super_glue", "boolq", ("question", "passage"), "label", ("False", "True"),
                       test_split="validation"),
}
# fmt: on


def hub_description(hub: HubSource) -> str:
    return f"hf:{hub.name}" + (f"/{hub.subset}" if hub.subset else "")


def load_hub_task(name: str, hint: str) -> dict[str, list[Example]]:
    """{"train", "test"} of built-in task `name` from its Hub copy, labels as the local label words."""
    if name not in HUB_SOURCES:
        raise DataError(f"task {name!r} has no local copy and no public Hugging Face copy is known; {hint}")
    hub = HUB_SOURCES[name]
    out: dict[str, list[Example]] = {}
    for split, split_name in (("train", hub.train_split), ("test", hub.test_split)):
        rows, _ = load_hub_rows(hub.name, hub.subset, split_name, (*hub.text, hub.label), hint)
        where = f"{hub_description(hub)} split {split_name!r}"
        examples = []
        for i, row in enumerate(rows):
            texts = []
            for column in hub.text:
                if not isinstance(row[column], str):
                    raise DataError(f"{where} row {i}: {column!r} is not a string")
                texts.append(row[column])
            value = row[hub.label]
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise DataError(f"{where} row {i}: label {value!r} is not an integer or a string")
            if isinstance(value, int) and not 0 <= value < len(hub.label_words):
                raise DataError(
                    f"{where} row {i}: label {value} is outside 0..{len(hub.label_words) - 1} (unlabelled?)"
                )
            label = hub.label_words[value] if isinstance(value, int) else value
            if len(texts) == 1:
                examples.append((texts[0], label))
            elif hub.join is not None:
                examples.append((hub.join.format(text_a=texts[0], text_b=texts[1]), label))
            else:
                examples.append(((texts[0], texts[1]), label))
        out[split] = examples
    return out
