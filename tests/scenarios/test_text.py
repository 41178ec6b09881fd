"""text-mtil scenario: loaders on small fixture files in the real formats, sampling, root, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rankwise.errors import ConfigError, DataError
from rankwise.scenarios.text import (
    DEFAULT_ORDER,
    TextMTILConfig,
    build_scenario,
    resolve_root,
    stratified_sample,
)

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    """A miniature copy of shared/data/text: one task per on-disk format."""
    text = tmp_path / "data" / "text"
    ag = text / "cl_benchmark" / "agnews"
    labels = ["World", "Sports", "Business", "Science or Technology"]
    write_json(ag / "labels.json", labels)
    write_json(
        ag / "train.json",
        [{"label": labels[i % 4], "sentence": f"Title: t{i}\nText: body {i}"} for i in range(20)],
    )
    write_json(ag / "test.json", [{"label": labels[i % 4], "sentence": f"test {i}"} for i in range(12)])
    trec = text / "sentence_classification" / "trec"
    trec.mkdir(parents=True)
    (trec / "train_5500.label").write_bytes(
        "ABBR:exp What does NASA stand for ?\nHUM:ind Who wrote Don Quixote ?\nLOC:city Where is Malm\xf6 ?\n"
        "NUM:date When was it built ?\n".encode("latin-1")
    )
    (trec / "TREC_10.label").write_bytes(b"DESC:def What is a caldera ?\nENTY:animal What animal barks ?\n")
    subj = text / "sentence_classification" / "subj"
    subj.mkdir(parents=True)
    (subj / "subj.objective").write_text("".join(f"objective line {i} . \n" for i in range(10)))
    (subj / "subj.subjective").write_text("".join(f"subjective line {i} . \n" for i in range(20)))
    instruction = "What is the monetary policy stance for the following text? Please answer 'dovish', 'hawkish' or 'neutral'.\n"
    fomc = text / "trace" / "FOMC"
    write_json(
        fomc / "train.json",
        [{"prompt": f"{instruction}Text:\nRates rise {i}.\nStance:", "answer": ["dovish", "hawkish", "neutral"][i % 3]}
         for i in range(9)],
    )  # fmt: skip
    write_json(
        fomc / "test.json", [{"prompt": f"{instruction}Document:\nRates fall.\nStance:", "answer": "dovish"}]
    )
    return tmp_path / "data"


def test_cl_benchmark_loader_maps_label_words_to_natural_class_names(data_root):
    (task,) = build_scenario(TextMTILConfig(root=str(data_root), tasks=["agnews"], test_size=None), seed=0)
    assert task.class_names == ["world news", "sports", "business", "science and technology"]
    assert [e.label for e in task.train[:5]] == [0, 1, 2, 3, 0]
    assert task.train[1].input == "Title: t1\nText: body 1"  # text kept verbatim
    assert len(task.train) == 20 and len(task.test) == 12
    assert all("{}" in t for t in task.templates)


def test_trec_reads_latin1_and_uses_coarse_label(data_root):
    (task,) = build_scenario(TextMTILConfig(root=str(data_root), tasks=["trec"], test_size=None), seed=0)
    assert task.class_names == ["abbreviation", "description", "entity", "person", "location", "number"]
    assert [(e.input, e.label) for e in task.train] == [
        ("What does NASA stand for ?", 0),
        ("Who wrote Don Quixote ?", 3),
        ("Where is Malmö ?", 4),
        ("When was it built ?", 5),
    ]
    assert [e.label for e in task.test] == [1, 2]


def test_fomc_extracts_sentence_from_text_and_document_prompts(data_root):
    (task,) = build_scenario(TextMTILConfig(root=str(data_root), tasks=["fomc"], test_size=None), seed=0)
    assert task.class_names == ["dovish", "hawkish", "neutral"]
    assert [(e.input, e.label) for e in task.train[:3]] == [
        ("Rates rise 0.", 0),
        ("Rates rise 1.", 1),
        ("Rates rise 2.", 2),
    ]
    assert [(e.input, e.label) for e in task.test] == [("Rates fall.", 0)]


def test_unsplit_task_gets_seeded_stratified_70_30_split(data_root):
    cfg = TextMTILConfig(root=str(data_root), tasks=["subj"], test_size=None)
    (task,) = build_scenario(cfg, seed=0)
    assert Counter(e.label for e in task.test) == {0: 3, 1: 6}  # round(0.3 * 10), round(0.3 * 20)
    assert Counter(e.label for e in task.train) == {0: 7, 1: 14}
    train, test = {e.input for e in task.train}, {e.input for e in task.test}
    assert not train & test and len(train | test) == 30
    (other_seed,) = build_scenario(cfg, seed=5)  # the split does not depend on the run seed ...
    assert [e.input for e in other_seed.test] == [e.input for e in task.test]
    (other_split,) = build_scenario(
        TextMTILConfig(root=str(data_root), tasks=["subj"], test_size=None, split_seed=1), 0
    )
    assert {e.input for e in other_split.test} != test  # ... but on split_seed


def test_shots_pick_n_per_class_with_the_run_seed(data_root):
    cfg = TextMTILConfig(root=str(data_root), tasks=["agnews"], shots=2, test_size=None)
    (a,) = build_scenario(cfg, seed=0)
    (b,) = build_scenario(cfg, seed=0)
    assert Counter(e.label for e in a.train) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert [e.input for e in a.train] == [e.input for e in b.train]
    picks = {tuple(e.input for e in build_scenario(cfg, seed=s)[0].train) for s in range(5)}
    assert len(picks) > 1
    assert a.info["shots"] == 2 and a.info["n_train"] == 8


def test_stratified_sample_largest_remainder_by_hand():
    import random

    labels = [0] * 5 + [1] * 3 + [2] * 2  # shares of 4 items: 2.0, 1.2, 0.8 -> 2, 1, 1
    idx = stratified_sample(labels, 4, random.Random(0))
    assert Counter(labels[i] for i in idx) == {0: 2, 1: 1, 2: 1}
    assert idx == sorted(idx)
    assert stratified_sample(labels, 50, random.Random(0)) == list(range(10))


def test_test_sample_is_fixed_size_and_stratified(data_root):
    (task,) = build_scenario(TextMTILConfig(root=str(data_root), tasks=["agnews"], test_size=8), seed=3)
    assert len(task.test) == 8 and Counter(e.label for e in task.test) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert task.info["n_test_total"] == 12


def test_validation_is_carved_from_train_stratified_fixed_and_never_trained_on(data_root):
    # agnews fixture: 20 train items, 5 per class; 8 validation items -> 2 per class (largest remainder)
    cfg = TextMTILConfig(root=str(data_root), tasks=["agnews"], test_size=None, validation_size=8)
    (plain,) = build_scenario(TextMTILConfig(root=str(data_root), tasks=["agnews"], test_size=None), seed=0)
    (task,) = build_scenario(cfg, seed=0)
    (scored,) = build_scenario(
        TextMTILConfig(root=str(data_root), tasks=["agnews"], test_size=None, validation_size=8, evaluate_on="validation"),
        seed=0,
    )
    validation = [e.input for e in scored.test]
    assert len(validation) == 8 and Counter(e.label for e in scored.test) == {0: 2, 1: 2, 2: 2, 3: 2}
    train = [e.input for e in task.train]
    assert len(train) == 12 and not set(train) & set(validation)
    assert set(train) | set(validation) == {e.input for e in plain.train}  # a partition of the train split
    assert [e.input for e in task.test] == [e.input for e in plain.test]  # test untouched
    assert [e.input for e in scored.train] == train  # the same training items whichever split is scored
    assert task.info["n_validation"] == 8 and task.info["evaluated_split"] == "test"
    assert scored.info["evaluated_split"] == "validation"
    # fixed by split_seed, not by the run seed; shots come from what is left
    (other_seed,) = build_scenario(
        TextMTILConfig(root=str(data_root), tasks=["agnews"], validation_size=8, evaluate_on="validation", shots=1),
        seed=7,
    )
    assert [e.input for e in other_seed.test] == validation
    assert len(other_seed.train) == 4 and not {e.input for e in other_seed.train} & set(validation)
    (other_split,) = build_scenario(
        TextMTILConfig(root=str(data_root), tasks=["agnews"], validation_size=8, evaluate_on="validation", split_seed=1),
        seed=0,
    )
    assert [e.input for e in other_split.test] != validation


def test_validation_errors_name_the_field(data_root):
    with pytest.raises(ConfigError, match="scenario.evaluate_on.*validation_size"):
        TextMTILConfig(evaluate_on="validation")
    with pytest.raises(ConfigError, match="scenario.evaluate_on.*'test', 'validation'"):
        TextMTILConfig(evaluate_on="dev", validation_size=5)
    with pytest.raises(ConfigError, match="scenario.validation_size"):
        TextMTILConfig(validation_size=0)
    with pytest.raises(ConfigError, match=r"scenario.validation_size.*fewer than the 20 train items of task 'agnews'"):
        build_scenario(TextMTILConfig(root=str(data_root), tasks=["agnews"], validation_size=20), seed=0)


def test_root_resolution_order(data_root, tmp_path, monkeypatch):
    monkeypatch.delenv("RANKWISE_DATA", raising=False)
    assert resolve_root(str(data_root)) == data_root / "text"
    assert resolve_root(str(data_root / "text")) == data_root / "text"
    monkeypatch.setenv("RANKWISE_DATA", str(data_root))
    assert resolve_root(None) == data_root / "text"
    monkeypatch.delenv("RANKWISE_DATA")
    work = tmp_path / "work" / "repo"
    work.mkdir(parents=True)
    (tmp_path / "work" / "shared").mkdir()
    (tmp_path / "work" / "shared" / "data").symlink_to(data_root)
    monkeypatch.chdir(work)
    assert resolve_root(None) == tmp_path / "work" / "shared" / "data" / "text"  # ../shared/data


def test_missing_root_and_task_folder_are_named(data_root, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="nowhere"):
        build_scenario(TextMTILConfig(root=str(tmp_path / "nowhere")), seed=0)
    monkeypatch.setenv("RANKWISE_DATA", str(tmp_path / "env_dir"))
    with pytest.raises(DataError, match="env_dir.*RANKWISE_DATA"):
        resolve_root(None)
    with pytest.raises(DataError, match=r"'yelp'.*cl_benchmark/yelp"):
        build_scenario(TextMTILConfig(root=str(data_root), tasks=["yelp"]), seed=0)


def test_missing_split_file_bad_label_and_empty_task(data_root):
    ag = data_root / "text" / "cl_benchmark" / "agnews"
    cfg = TextMTILConfig(root=str(data_root), tasks=["agnews"])
    (ag / "test.json").unlink()
    with pytest.raises(DataError, match="test split.*test.json"):
        build_scenario(cfg, seed=0)
    write_json(ag / "test.json", [{"label": "Weather", "sentence": "rain"}])
    with pytest.raises(DataError, match="'Weather' is not in labels.json"):
        build_scenario(cfg, seed=0)
    write_json(ag / "test.json", [])
    with pytest.raises(DataError, match="empty split"):
        build_scenario(cfg, seed=0)
    write_json(
        data_root / "text" / "trace" / "FOMC" / "test.json", [{"prompt": "no markers", "answer": "dovish"}]
    )
    with pytest.raises(DataError, match="item 0"):
        build_scenario(TextMTILConfig(root=str(data_root), tasks=["fomc"]), seed=0)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"tasks": ["agnews", "nope"]}, "scenario.tasks"), ({"tasks": "agnews"}, "scenario.tasks"),
     ({"tasks": ["sst2", "sst2"]}, "scenario.tasks"), ({"shots": 0}, "scenario.shots"),
     ({"test_size": 0}, "scenario.test_size")],
)  # fmt: skip
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TextMTILConfig(**kwargs)


@pytest.mark.skipif(not (REAL_DATA / "text").is_dir(), reason="shared/data not present")
def test_default_stream_on_real_data():
    tasks = build_scenario(TextMTILConfig(root=str(REAL_DATA), test_size=200), seed=0)
    assert [t.name for t in tasks] == list(DEFAULT_ORDER) and len(tasks) >= 8
    n_classes = {t.name: len(t.class_names) for t in tasks}
    assert n_classes == {"agnews": 4, "yelp": 5, "trec": 6, "dbpedia": 14, "subj": 2, "fomc": 3,
                         "amazon": 5, "sst2": 2, "mpqa": 2}  # fmt: skip
    for t in tasks:
        assert len(t.test) == 200 and len(t.train) > 1000
        assert set(e.label for e in t.test) == set(range(len(t.class_names)))
    fomc = tasks[[t.name for t in tasks].index("fomc")]
    assert not any("Stance" in e.input or "monetary policy stance" in e.input for e in fomc.train + fomc.test)


# -- the built-in tasks are bit-identical to the code before the generic scenario -----------------
def task_digest(task) -> str:
    """sha256 of everything a run reads from a task (examples in order, class names, templates, metric,
    label space, info except the absolute source path), as JSON."""
    import hashlib

    info = {k: v for k, v in task.info.items() if k != "source"}
    blob = json.dumps(
        [task.name, [[e.input, e.label] for e in task.train], [[e.input, e.label] for e in task.test],
         task.class_names, task.templates, task.metric, task.eval_class_names, task.label_offset, info],
        ensure_ascii=False,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: `task_digest` of every built-in task on shared/data, computed with the code of commit 3452b25
#: (before text-classification and the Hub fallback existed): default config (test_size 300, split_seed 0,
#: all shots, seed 0), and shots 5 / test_size 60 / run seed 1.
BEFORE = {
    "default": {
        "agnews": "7e1fcc1a52edc0dd", "amazon": "f91e67c229374cb2", "cr": "16233286f0092ff0",
        "dbpedia": "e893be270935bdc7", "fomc": "787e3b0107542884", "imdb": "ae285f073ff6347b",
        "mpqa": "3f0ec9f0a5ad430d", "mr": "0460f7e738f7ea0d", "sst2": "e1533a9ad0f723aa",
        "subj": "f087fe7352fb601d", "trec": "1b598ffef70dd087", "yelp": "d39f4173f8237c5d",
    },
    "shots5_seed1": {"agnews": "074f9eaa989dac51", "subj": "98569c3d23b2da03", "trec": "9694d921ce2248cf",
                     "fomc": "2924f9a53cb4f0ef"},
}  # fmt: skip


@pytest.mark.skipif(not (REAL_DATA / "text").is_dir(), reason="shared/data not present")
def test_builtin_tasks_are_bit_identical_to_before_and_as_text_classification_presets():
    from rankwise.scenarios.text_classification import TextClassificationConfig
    from rankwise.scenarios.text_classification import build_scenario as build_generic

    tasks = build_scenario(TextMTILConfig(root=str(REAL_DATA), tasks=sorted(BEFORE["default"])), seed=0)
    assert {t.name: task_digest(t) for t in tasks} == BEFORE["default"]
    names = sorted(BEFORE["shots5_seed1"])
    few = build_scenario(TextMTILConfig(root=str(REAL_DATA), tasks=names, shots=5, test_size=60), seed=1)
    assert {t.name: task_digest(t) for t in few} == BEFORE["shots5_seed1"]
    # the same tasks as presets of the generic scenario: every field equal, info included
    generic = build_generic(
        TextClassificationConfig(tasks=names, shots=5, test_size=60, root=str(REAL_DATA)), seed=1
    )
    assert generic == few


def test_pair_task_in_text_mtil_is_refused_pointing_at_text_classification():
    with pytest.raises(ConfigError, match=r"'rte' is a sentence-pair task.*text-classification"):
        TextMTILConfig(tasks=["agnews", "rte"])
    with pytest.raises(ConfigError, match="scenario.source"):
        TextMTILConfig(source="internet")
