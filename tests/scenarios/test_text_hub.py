"""Built-in text tasks without a local shared/data: their public Hugging Face copies, tested offline.

Each "Hub" dataset is served from a local folder of data files built here from shared/data in the Hub
copy's own schema (its columns, integer labels in its label order, its split names); the resolver
`text_sources.hub_dataset_path` points the Hub name at that folder, and ``datasets`` runs offline
(HF_HUB_OFFLINE) with its cache in tmp. A task built from the Hub copy must equal the task built from
the local files: same items, order, label ids, class names and templates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rankwise.errors import DataError
from rankwise.scenarios import text_sources
from rankwise.scenarios.readers import load_cl_benchmark, load_trec
from rankwise.scenarios.text import TextMTILConfig, build_scenario
from rankwise.scenarios.text_classification import TextClassificationConfig
from rankwise.scenarios.text_classification import build_scenario as build_generic
from rankwise.scenarios.text_presets import HUB_SOURCES, load_pair_task

datasets = pytest.importorskip("datasets")
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (REAL_DATA / "text").is_dir(), reason="shared/data not present")


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """No local data where text-mtil looks, datasets offline with an empty cache in tmp."""
    import huggingface_hub.constants

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("RANKWISE_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    return tmp_path


def hub_rows(task: str, pairs) -> list[dict]:
    """shared/data items in the Hub copy's schema: its columns, its integer label ids."""
    hub = HUB_SOURCES[task]
    rows = []
    for text, label in pairs:
        texts = text if isinstance(text, tuple) else (text,)
        rows.append({**dict(zip(hub.text, texts)), hub.label: hub.label_words.index(label)})
    return rows


def serve(tmp_path: Path, monkeypatch, splits_by_task: dict[str, dict[str, list]]) -> dict[str, int]:
    """Write <tmp>/hub/<task>/<split>.jsonl and point each Hub name at it; returns load counts."""
    folders, calls = {}, {}
    for task, splits in splits_by_task.items():
        hub = HUB_SOURCES[task]
        folder = tmp_path / "hub" / task
        folder.mkdir(parents=True)
        for split, hub_split in (("train", hub.train_split), ("test", hub.test_split)):
            lines = "".join(json.dumps(r) + "\n" for r in hub_rows(task, splits[split]))
            (folder / f"{hub_split}.jsonl").write_text(lines, encoding="utf-8")
        folders[(hub.name, hub.subset)] = str(folder)

    def resolve(name, subset):
        calls[name] = calls.get(name, 0) + 1
        return folders[(name, subset)], None

    monkeypatch.setattr(text_sources, "hub_dataset_path", resolve)
    return calls


def local(task: str, seed: int = 0, **kw):
    (built,) = build_scenario(TextMTILConfig(root=str(REAL_DATA), tasks=[task], **kw), seed=seed)
    return built


def test_without_local_data_builtin_tasks_load_their_hub_copies(offline, monkeypatch):
    text = REAL_DATA / "text"
    calls = serve(offline, monkeypatch, {
        "agnews": load_cl_benchmark(text / "cl_benchmark" / "agnews"),
        "trec": load_trec(text / "sentence_classification" / "trec"),
    })  # fmt: skip
    tasks = build_scenario(TextMTILConfig(tasks=["agnews", "trec"], test_size=100, shots=20), seed=3)
    assert calls == {"fancyzhx/ag_news": 2, "CogComp/trec": 2}  # train and test split of each
    for task in tasks:
        reference = local(task.name, seed=3, test_size=100, shots=20)
        assert (task.train, task.test, task.class_names, task.templates) == (
            reference.train, reference.test, reference.class_names, reference.templates,
        )  # fmt: skip
        assert task.info["format"] == "hf" and task.info["source"] == "hf:" + HUB_SOURCES[task.name].name
    # a local folder still wins when present: no Hub load at all
    (offline / "work" / "shared").mkdir()
    (offline / "work" / "shared" / "data").symlink_to(REAL_DATA)
    again = build_scenario(TextMTILConfig(tasks=["agnews"], test_size=100, shots=20), seed=3)
    assert calls == {"fancyzhx/ag_news": 2, "CogComp/trec": 2}
    assert again[0].info["source"] == str(
        offline / "work" / "shared" / "data" / "text" / "cl_benchmark" / "agnews"
    )


def test_pair_preset_from_the_hub_is_the_same_pair_task(offline, monkeypatch):
    splits = load_pair_task("rte", REAL_DATA / "text" / "cl_benchmark" / "rte")
    calls = serve(offline, monkeypatch, {"rte": splits})
    (task,) = build_generic(TextClassificationConfig(tasks=["rte"], test_size=50), seed=0)
    (reference,) = build_generic(
        TextClassificationConfig(tasks=["rte"], test_size=50, root=str(REAL_DATA)), seed=0
    )
    assert calls == {"nyu-mll/glue": 2} and task.info["source"] == "hf:nyu-mll/glue/rte"
    assert task.train == reference.train and task.test == reference.test
    assert all(isinstance(e.input, tuple) for e in task.train)


def test_offline_without_local_data_is_one_line_saying_how_to_point_at_local_files(offline):
    with pytest.raises(DataError) as info:
        build_scenario(TextMTILConfig(tasks=["agnews"]), seed=0)
    message = str(info.value)
    assert "\n" not in message
    assert "'fancyzhx/ag_news'" in message and "could not be loaded" in message
    assert "set scenario.root or RANKWISE_DATA to the folder holding text/" in message
    with pytest.raises(DataError, match="'amazon' has no local copy and no public Hugging Face copy"):
        build_scenario(TextMTILConfig(tasks=["amazon"]), seed=0)


def test_named_places_never_fall_back_and_source_local_or_hub(offline, monkeypatch):
    with pytest.raises(DataError, match="nowhere"):
        build_scenario(TextMTILConfig(root=str(offline / "nowhere"), tasks=["agnews"]), seed=0)
    with pytest.raises(DataError, match="text-mtil data not found"):
        build_scenario(TextMTILConfig(tasks=["agnews"], source="local"), seed=0)
    calls = serve(
        offline, monkeypatch, {"sst2": load_cl_benchmark(REAL_DATA / "text" / "cl_benchmark" / "sst2")}
    )
    (task,) = build_scenario(TextMTILConfig(root=str(REAL_DATA), tasks=["sst2"], source="hub"), seed=0)
    assert calls == {"stanfordnlp/sst2": 2} and task.train == local("sst2").train


def test_missing_datasets_package_says_what_to_install(offline, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install 'rankwise\[datasets\]'"):
        build_scenario(TextMTILConfig(tasks=["agnews"]), seed=0)


def test_cli_offline_without_data_fails_in_one_line(offline, capsys):
    from rankwise import cli

    code = cli.main(["run", "text_mtil_quickstart", "--set", "output.dir=run", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "scenario.root or RANKWISE_DATA" in err, err
