"""TRACE-format scenario: folder loader on fixture folders, caps, metrics, errors, shared-text stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankwise.errors import ConfigError, DataError
from rankwise.scenarios.trace import TraceConfig, build_scenario, shared_text_prompt
from rankwise.tasks import GenerationExample

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_task(root: Path, name: str, splits: dict[str, list]) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        (root / name / f"{split}.json").write_text(json.dumps(items), encoding="utf-8")


def pairs(n: int, tag: str) -> list[dict]:
    return [{"prompt": f"{tag} prompt {i}", "answer": f"{tag} answer {i}"} for i in range(n)]


@pytest.fixture
def root(tmp_path):
    write_task(tmp_path, "FOMC", {"train": pairs(10, "f"), "test": pairs(4, "ft")})
    write_task(tmp_path, "Py150", {"train": pairs(6, "p"), "eval": pairs(3, "pe")})
    write_task(tmp_path, "mine", {"train": pairs(5, "m"), "test": pairs(5, "mt"), "eval": pairs(2, "me")})
    return tmp_path


def test_folder_stream_order_metrics_and_fallback(root):
    tasks = build_scenario(TraceConfig(root=str(root), tasks=["Py150", "mine", "FOMC"]), seed=0)
    assert [t.name for t in tasks] == ["Py150", "mine", "FOMC"]
    assert [t.metric for t in tasks] == ["edit_similarity", "exact_match", "exact_match"]
    assert [t.max_new_tokens for t in tasks] == [64, 64, 8]
    py, mine, fomc = tasks
    assert py.info["test_split"] == "eval" and mine.info["test_split"] == "test"
    assert py.test == [GenerationExample(f"pe prompt {i}", f"pe answer {i}") for i in range(3)]
    assert fomc.train[3] == GenerationExample("f prompt 3", "f answer 3") and len(fomc.train) == 10


def test_caps_are_seeded_ordered_subsamples_and_test_is_seed_independent(root):
    cfg = TraceConfig(root=str(root), tasks=["FOMC", "mine"], max_train={"FOMC": 4}, max_test=2)
    a = build_scenario(cfg, seed=0)
    b = build_scenario(cfg, seed=1)
    assert len(a[0].train) == 4 and len(a[1].train) == 5  # cap only for FOMC
    idx = [int(ex.prompt.split()[-1]) for ex in a[0].train]
    assert idx == sorted(idx) and len(set(idx)) == 4
    assert a[0].train == build_scenario(cfg, seed=0)[0].train
    assert a[0].train != b[0].train  # run seed changes the training subsample (4 of 10: 210 ways)
    assert a[0].test == b[0].test and len(a[0].test) == 2
    assert a[0].info["n_train_available"] == 10


def test_overrides(root):
    cfg = TraceConfig(
        root=str(root),
        tasks=["FOMC", "mine"],
        metrics={"mine": "rouge_l"},
        max_new_tokens={"mine": 100},
        default_metric="edit_similarity",
    )
    fomc, mine = build_scenario(cfg, 0)
    assert (mine.metric, mine.max_new_tokens, fomc.max_new_tokens) == ("rouge_l", 100, 8)


def test_config_errors():
    with pytest.raises(ConfigError, match="scenario.root"):
        TraceConfig(tasks=["a"])
    with pytest.raises(ConfigError, match="scenario.tasks"):
        TraceConfig(root="x")
    with pytest.raises(ConfigError, match="scenario.source"):
        TraceConfig(source="hub", root="x", tasks=["a"])
    with pytest.raises(ConfigError, match="scenario.tasks"):
        TraceConfig(root="x", tasks=["a", "a"])
    with pytest.raises(ConfigError, match="scenario.metrics.a"):
        TraceConfig(root="x", tasks=["a"], metrics={"a": "bleu"})
    with pytest.raises(ConfigError, match="scenario.max_train.b"):
        TraceConfig(root="x", tasks=["a"], max_train={"b": 3})
    with pytest.raises(ConfigError, match="scenario.max_test"):
        TraceConfig(root="x", tasks=["a"], max_test=0)
    with pytest.raises(ConfigError, match="scenario.tasks"):
        TraceConfig(source="shared-text", tasks=["mnli"])


def test_data_errors(root):
    def build(task):
        return build_scenario(TraceConfig(root=str(root), tasks=[task]), 0)

    with pytest.raises(DataError, match="does not exist.*FOMC"):
        build("nope")
    write_task(root, "notest", {"train": pairs(2, "x")})
    with pytest.raises(DataError, match="no test split.*test.json, eval.json"):
        build("notest")
    write_task(root, "notrain", {"test": pairs(2, "x")})
    with pytest.raises(DataError, match="missing train split"):
        build("notrain")
    write_task(root, "empty", {"train": [], "test": pairs(2, "x")})
    with pytest.raises(DataError, match="train split is empty"):
        build("empty")
    write_task(root, "keys", {"train": [{"prompt": "p", "output": "o"}], "test": pairs(1, "x")})
    with pytest.raises(
        DataError, match=r"item 0: expected an object with keys 'prompt' and 'answer', found \['output'"
    ):
        build("keys")
    write_task(root, "types", {"train": [{"prompt": "p", "answer": 3}], "test": pairs(1, "x")})
    with pytest.raises(DataError, match="must be strings"):
        build("types")
    write_task(root, "bad", {"test": pairs(1, "x")})
    (root / "bad" / "train.json").write_text('[{"prompt": "p", "answer"', encoding="utf-8")
    with pytest.raises(DataError, match="not valid UTF-8 JSON"):
        build("bad")
    (root / "bad" / "train.json").write_text('{"prompt": "p", "answer": "a"}', encoding="utf-8")
    with pytest.raises(DataError, match="JSON list"):
        build("bad")


@pytest.mark.skipif(not (SHARED / "text").is_dir(), reason="shared/data/text not present")
def test_shared_text_stream_from_real_data():
    cfg = TraceConfig(
        source="shared-text",
        root=str(SHARED),
        tasks=["fomc", "agnews", "trec", "sst2"],
        max_train=50,
        max_test=20,
    )
    fomc, agnews, trec, sst2 = build_scenario(cfg, 0)
    assert fomc.train[0].prompt.startswith("What is the monetary policy stance")
    assert {ex.answer for ex in fomc.test} <= {"dovish", "hawkish", "neutral"}
    words = ["world news", "sports", "business", "science and technology"]
    assert {ex.answer for ex in agnews.train} <= set(words) and len(agnews.train) == 50
    assert agnews.train[0].prompt.startswith(
        "What is the topic of this news article? Answer with one of: world news, sports, business, "
        "science and technology.\nTitle: "
    ) and agnews.train[0].prompt.endswith("\nAnswer:")
    assert trec.train[0].prompt.split("\n")[1].startswith("Question: ")
    assert {ex.answer for ex in trec.test} <= {
        "abbreviation",
        "description",
        "entity",
        "person",
        "location",
        "number",
    }
    assert {ex.answer for ex in sst2.test} <= {"positive", "negative"}
    assert all(t.metric == "exact_match" and t.max_new_tokens == 8 for t in (fomc, agnews, trec, sst2))
    assert "{text}" in agnews.info["template"]


def test_shared_text_prompt_template():
    assert shared_text_prompt("trec", "Who was Galileo ?", ["person", "number"]) == (
        "What type of thing does this question ask for? Answer with one of: person, number.\n"
        "Question: Who was Galileo ?\nAnswer:"
    )
