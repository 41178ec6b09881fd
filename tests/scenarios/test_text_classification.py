"""text-classification: a user's files (JSONL, JSON, CSV, TSV, Parquet) and Hugging Face datasets, labels,
pairs, splits, presets, errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from rankwise.config import config_from_dict
from rankwise.errors import ConfigError, DataError
from rankwise.scenarios.text_classification import TextClassificationConfig, TextTaskConfig, build_scenario

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ROWS = [{"text": f"item {i}", "label": ["spam", "ham", "eggs"][i % 3], "other": f"b{i}"} for i in range(30)]


def write_rows(path: Path, rows: list[dict], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt in ("csv", "tsv"):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def one(task: dict, **scenario) -> object:
    (built,) = build_scenario(TextClassificationConfig(tasks=[task], **scenario), seed=0)
    return built


def test_jsonl_task_labels_seeded_split_and_defaults(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", ROWS, "jsonl")
    task = one({"name": "mine", "source": str(path)})
    assert task.class_names == ["eggs", "ham", "spam"] and task.templates == ["{}"]  # labels, sorted
    # 10 items per label, 3 of each held out (round(0.3 * 10)), both splits in file order, no overlap
    assert Counter(e.label for e in task.test) == {0: 3, 1: 3, 2: 3}
    inputs = [e.input for e in task.train] + [e.input for e in task.test]
    assert sorted(inputs) == sorted(r["text"] for r in ROWS)
    for split in (task.train, task.test):
        ids = [int(e.input.split()[1]) for e in split]
        assert ids == sorted(ids)
    for e in task.train + task.test:  # every label id names the row's own label
        assert task.class_names[e.label] == ROWS[int(e.input.split()[1])]["label"]
    assert task.info["split"].startswith("seeded stratified 70%/30%") and task.info["input"] == "text"
    again = one({"name": "mine", "source": str(path)})
    other_seed = one({"name": "mine", "source": str(path)}, split_seed=1)
    assert again == task and [e.input for e in other_seed.test] != [e.input for e in task.test]


@pytest.mark.parametrize("fmt", ["json", "csv", "tsv", "parquet"])
def test_every_file_format_gives_the_jsonl_task(tmp_path, fmt):
    reference = one({"name": "t", "source": str(write_rows(tmp_path / "d.jsonl", ROWS, "jsonl"))})
    task = one({"name": "t", "source": str(write_rows(tmp_path / f"d.{fmt}", ROWS, fmt))})
    assert (task.train, task.test, task.class_names) == (
        reference.train,
        reference.test,
        reference.class_names,
    )
    assert task.info["format"] == fmt


def test_class_names_mapping_list_and_integer_labels(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    path = write_rows(tmp_path / "d.jsonl", rows, "jsonl")
    # a mapping (YAML integer keys): label ids in its order
    task = one({"name": "m", "source": str(path), "class_names": {1: "positive", 0: "negative"}})
    assert task.class_names == ["positive", "negative"]
    assert all(e.label == 1 - rows[int(e.input[1:])]["label"] for e in task.train + task.test)
    # a list with integer labels: label i is class i
    task = one({"name": "l", "source": str(path), "class_names": ["negative", "positive"]})
    assert all(e.label == rows[int(e.input[1:])]["label"] for e in task.train + task.test)
    # integer labels without names sort as numbers
    wide = write_rows(
        tmp_path / "w.jsonl", [{"text": f"t{i}", "label": [2, 10][i % 2]} for i in range(10)], "jsonl"
    )
    assert one({"name": "w", "source": str(wide)}).class_names == ["2", "10"]
    with pytest.raises(DataError, match=r"label '1' is not one of \['0'\]"):
        one({"name": "x", "source": str(path), "class_names": {0: "negative"}})


def test_sentence_pairs_stay_pairs_unless_a_template_joins_them(tmp_path):
    path = write_rows(tmp_path / "p.jsonl", ROWS, "jsonl")
    task = one({"name": "p", "source": str(path), "text": ["text", "other"]})
    assert all(isinstance(e.input, tuple) and e.input[1] == "b" + e.input[0].split()[1] for e in task.train)
    assert task.info["input"] == "pair"
    joined = one(
        {"name": "p", "source": str(path), "text": ["text", "other"], "pair_template": "{text_a} || {text_b}"}
    )
    assert [e.input for e in joined.train] == [f"{a} || {b}" for a, b in (e.input for e in task.train)]
    assert joined.info["input"] == "text" and joined.info["pair_template"] == "{text_a} || {text_b}"


def test_test_file_and_test_size_and_shots(tmp_path):
    train = write_rows(tmp_path / "train.csv", ROWS, "csv")
    test = write_rows(tmp_path / "test.csv", ROWS[:12], "csv")
    task = one({"name": "f", "source": str(train), "test_source": str(test)}, test_size=6, shots=2)
    assert len(task.train) == 6 and Counter(e.label for e in task.train) == {0: 2, 1: 2, 2: 2}
    assert len(task.test) == 6 and task.info["n_test_total"] == 12 and task.info["split"] == "files"


def test_validation_split_of_a_users_file_and_preset_tasks(tmp_path):
    train = write_rows(tmp_path / "train.csv", ROWS, "csv")  # 30 rows, 10 per label
    test = write_rows(tmp_path / "test.csv", ROWS[:12], "csv")
    spec = {"name": "f", "source": str(train), "test_source": str(test)}
    trained = one(spec, validation_size=6)
    scored = one(spec, validation_size=6, evaluate_on="validation")
    assert len(trained.train) == 24 and len(scored.test) == 6
    assert Counter(e.label for e in scored.test) == {0: 2, 1: 2, 2: 2}  # stratified
    assert not {e.input for e in scored.test} & {e.input for e in trained.train}
    assert trained.test == one(spec).test and trained.info["n_validation"] == 6
    with pytest.raises(ConfigError, match="scenario.evaluate_on"):
        TextClassificationConfig(tasks=[spec], evaluate_on="validation")


def test_hugging_face_folder_with_class_label_and_named_splits(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    folder = tmp_path / "hf"
    folder.mkdir()
    for split, n in (("train", 12), ("validation", 6)):
        data = {"text": [f"{split} {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(folder / f"{split}.parquet"))
    task = one({"name": "h", "source": str(folder), "format": "hf", "test_split": "validation"})
    assert task.class_names == ["neg", "pos"]  # the ClassLabel names
    assert [e.input for e in task.test] == [f"validation {i}" for i in range(6)]
    assert [e.label for e in task.train] == [i % 2 for i in range(12)]
    with pytest.raises(DataError, match=r"no column 'body'.*\['text', 'label'\]"):
        one({"name": "h", "source": str(folder), "format": "hf", "text": "body"})


def test_preset_pair_task_splits_the_cl_benchmark_sentence(tmp_path):
    rte = tmp_path / "data" / "text" / "cl_benchmark" / "rte"
    rte.mkdir(parents=True)
    (rte / "labels.json").write_text(json.dumps(["contradiction", "entailment"]))
    items = [{"sentence": f"sentence 1: premise {i}.\nsentence 2: hypothesis {i}.", "label": ["entailment", "contradiction"][i % 2]}
             for i in range(6)]  # fmt: skip
    for split in ("train", "test"):
        (rte / f"{split}.json").write_text(json.dumps(items))
    task = one({"preset": "rte"}, root=str(tmp_path / "data"))
    assert [e.input for e in task.train] == [(f"premise {i}.", f"hypothesis {i}.") for i in range(6)]
    assert [task.class_names[e.label] for e in task.train] == ["entailed", "not entailed"] * 3
    assert task.info["input"] == "pair" and task.templates[0] == "The second sentence is {} by the first."
    renamed = one({"preset": "rte", "name": "nli", "class_names": ["no", "yes"], "templates": ["{}"]},
                  root=str(tmp_path / "data"))  # fmt: skip
    assert renamed.name == "nli" and renamed.class_names == ["no", "yes"] and renamed.train == task.train
    items[2]["sentence"] = "premise without markers"
    (rte / "test.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"test.json item 2: expected 'sentence 1: '"):
        one({"preset": "rte"}, root=str(tmp_path / "data"))


@pytest.mark.skipif(not (REAL_DATA / "text").is_dir(), reason="shared/data not present")
def test_real_pair_presets_never_hold_the_joined_string():
    tasks = build_scenario(
        TextClassificationConfig(
            tasks=["rte", "mnli", "qqp", "cb", "boolq"], root=str(REAL_DATA), test_size=50
        ),
        seed=0,
    )
    for task in tasks:
        for e in task.train[:200] + task.test:
            a, b = e.input
            assert (
                a
                and b
                and "sentence 2:" not in a + b
                and "second sentence:" not in a + b
                and "passage:" not in a
            )


def test_toy_backbone_refuses_a_pair_task_by_name(tmp_path):
    from rankwise.backbones.toy import ToyBackboneConfig, build_backbone

    task = one(
        {
            "name": "pairs",
            "source": str(write_rows(tmp_path / "p.jsonl", ROWS, "jsonl")),
            "text": ["text", "other"],
        }
    )
    with pytest.raises(DataError, match="task 'pairs'"):
        build_backbone(ToyBackboneConfig(), "cpu").collate(task.train[:2], task, train=True)


def test_run_config_round_trip_and_errors_name_the_field(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", ROWS, "jsonl")
    data = {
        "name": "x", "method": {"name": "lora"}, "backbone": {"name": "sentence-encoder"},
        "scenario": {"name": "text-classification", "tasks": [{"name": "a", "source": str(path)}, "agnews"]},
    }  # fmt: skip
    config = config_from_dict(data)
    tasks = config.scenario.config.tasks
    assert [t.name for t in tasks] == ["a", "agnews"] and tasks[1].preset == "agnews"
    again = config_from_dict(config.to_dict())  # what a run saves and `--resume` reads back
    assert again.scenario.config == config.scenario.config
    bad = [
        ({"name": "a"}, "scenario.tasks[0].source"),
        ({"name": "a", "source": "x.jsonl", "colour": 1}, "scenario.tasks[0].colour"),
        ({"preset": "agnewz"}, "scenario.tasks[0].preset"),
        ({"preset": "agnews", "source": "x.jsonl"}, "scenario.tasks[0].source"),
        ({"name": "a", "source": "x.jsonl", "text": ["a", "b", "c"]}, "scenario.tasks[0].text"),
        ({"name": "a", "source": "x.jsonl", "pair_template": "{text_a}"}, "scenario.tasks[0].pair_template"),
        ({"name": "a", "source": "x.jsonl", "templates": ["no placeholder"]}, "scenario.tasks[0].templates"),
        ({"name": "a", "source": "x.jsonl", "test_fraction": 1.5}, "scenario.tasks[0].test_fraction"),
        ({"name": "a", "source": "x.jsonl", "format": "xml"}, "scenario.tasks[0].format"),
    ]
    for task, field in bad:
        with pytest.raises(ConfigError) as info:
            config_from_dict({**data, "scenario": {"name": "text-classification", "tasks": [task]}})
        assert info.value.field == field, (task, info.value)
    with pytest.raises(ConfigError, match="each task name at most once"):
        TextClassificationConfig(tasks=["agnews", {"name": "agnews", "source": "x.jsonl"}])
    with pytest.raises(ConfigError, match="scenario.tasks"):
        TextClassificationConfig(tasks=[])
    assert TextTaskConfig(preset="rte").name == "rte"


def test_data_errors_name_the_file_the_row_and_the_columns(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl does not exist"):
        one({"name": "a", "source": str(tmp_path / "missing.jsonl")})
    path = write_rows(tmp_path / "d.jsonl", [{"body": "x", "label": "a"}], "jsonl")
    with pytest.raises(
        DataError, match=r"d.jsonl row 0: no column 'text'; its columns are \['body', 'label'\]"
    ):
        one({"name": "a", "source": str(path)})
    path = write_rows(tmp_path / "f.jsonl", [{"text": "x", "label": 1.5}], "jsonl")
    with pytest.raises(DataError, match=r"row 0: label 'label' is 1.5 \(float\)"):
        one({"name": "a", "source": str(path)})
    path = write_rows(tmp_path / "n.jsonl", [{"text": None, "label": "a"}], "jsonl")
    with pytest.raises(DataError, match=r"row 0: 'text' is None"):
        one({"name": "a", "source": str(path)})
    (tmp_path / "broken.jsonl").write_text('{"text": "x", "label": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="broken.jsonl line 2 is not valid JSON"):
        one({"name": "a", "source": str(tmp_path / "broken.jsonl")})
    path = write_rows(tmp_path / "one.jsonl", [{"text": "x", "label": "a"}], "jsonl")
    with pytest.raises(DataError, match="empty split"):
        one({"name": "a", "source": str(path)})
