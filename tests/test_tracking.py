"""Experiment trackers (rankwise.tracking), each read back with its backend's own reader.

One tiny toy run writes all four loggers; the expected points are derived here from events.jsonl
by hand (step = (task - 1) * iterations + iteration; evaluation after task t at t * iterations).
"""

from __future__ import annotations

import csv
import json
import math
import struct
import zlib
from pathlib import Path

import pytest

from rankwise.cli import main
from rankwise.config import config_from_dict
from rankwise.engine.continual import run_experiment
from rankwise.errors import ConfigError
from rankwise.tracking import Tracker, check_loggers

ITERATIONS = 6
TASKS = ["syn0", "syn1"]


def _config(loggers: list[str]) -> dict:
    return {
        "name": "track_toy",
        "seed": 3,
        "device": "cpu",
        "method": {"name": "lora", "r": 2},
        "backbone": {"name": "toy", "dim": 16, "embed_dim": 16},
        "scenario": {"name": "synthetic", "num_tasks": 2, "train_per_class": 8, "test_per_class": 4},
        "train": {
            "iterations": ITERATIONS,
            "batch_size": 16,
            "lr": 1e-2,
            "log_every": 2,
            "checkpoint_every": 3,
        },
        "output": {"loggers": loggers},
    }


def _expected(events: list[dict]) -> dict[str, dict[int, float]]:
    """tag -> {step: value}, by the rule in the module docstring of rankwise.tracking."""
    out: dict[str, dict[int, float]] = {}
    for e in events:
        if e["event"] == "step":
            step = (e["task"] - 1) * ITERATIONS + e["iteration"]
            for key in ("loss", "lr", "examples_per_s"):
                out.setdefault(f"train/{key}", {})[step] = e[key]
        else:
            done = 0 if e["event"] == "evaluation" else e["task"]
            for name, value in zip(TASKS, e["row"]):
                out.setdefault(f"eval/{name}", {})[done * ITERATIONS] = value
            out.setdefault("eval/average", {})[done * ITERATIONS] = sum(e["row"]) / len(e["row"])
            if done:
                out.setdefault("eval/seen", {})[done * ITERATIONS] = sum(e["row"][:done]) / done
    return out


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> tuple[Path, dict[str, dict[int, float]]]:
    pytest.importorskip(
        "tensorboard", reason="tensorboard not installed (pip install 'rankwise[tensorboard]')"
    )
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'rankwise[wandb]')")
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'rankwise[mlflow]')")
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    config = config_from_dict(_config(["csv", "tensorboard", "wandb", "mlflow"]))
    run_experiment(config, run_dir, quiet=True)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    expected = _expected(events)
    # 2 tasks x (iterations 2, 4, 6) logged steps, zero-shot + 2 evaluations
    assert len(expected["train/loss"]) == 6 and sorted(expected["eval/syn0"]) == [0, 6, 12]
    return run_dir, expected


def test_csv_logger_has_every_point(tracked):
    run_dir, expected = tracked
    with open(run_dir / "logs" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    got: dict[str, dict[int, float]] = {}
    for row in rows:
        for tag, value in row.items():
            if tag not in ("step", "event") and value != "":
                got.setdefault(tag, {})[int(row["step"])] = float(value)
    expected_all = {tag: pts for tag, pts in expected.items()}
    assert {t: got[t] for t in expected_all} == expected_all
    assert [r["event"] for r in rows].count("evaluation") == 3


def test_tensorboard_logger_read_by_event_accumulator(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, expected = tracked
    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard"))
    acc.Reload()
    for tag, points in expected.items():
        scalars = acc.Scalars(tag)
        assert [s.step for s in scalars] == sorted(points), tag  # each step once, in order
        for s in scalars:  # TensorBoard stores float32
            assert math.isclose(s.value, points[s.step], rel_tol=1e-6, abs_tol=1e-6), (tag, s.step)


def _wandb_records(path: Path) -> list:
    """Records of a .wandb file: W&B's block format (7-byte header ':W&B' + magic + version; 32 KiB
    blocks of chunks [crc32 | length | type] FULL/FIRST/MIDDLE/LAST), decoded with W&B's own protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, raw = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        assert zlib.crc32(bytes([kind]) + chunk) == crc, "corrupt .wandb chunk"
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            raw.append(pending)
    records = []
    for item in raw:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(item)
        records.append(record)
    return records


def test_wandb_logger_offline_run_file(tracked):
    run_dir, expected = tracked
    files = list((run_dir / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(files[0])
    history: dict[int, dict] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(record.history.step.num, {}).update(items)
    for tag, points in expected.items():
        got = {step: row[tag] for step, row in history.items() if tag in row}
        assert got == pytest.approx(points), tag
    config = [r.run.config for r in records if r.WhichOneof("record_type") == "run"]
    keys = {item.key: json.loads(item.value_json) for item in config[0].update}
    assert keys["method"]["name"] == "lora" and keys["train"]["iterations"] == ITERATIONS
    state = json.loads((run_dir / "logs" / "tracking.json").read_text())
    assert files[0].name == f"run-{state['wandb_id']}.wandb"


def test_mlflow_logger_file_store(tracked):
    from mlflow.tracking import MlflowClient

    run_dir, expected = tracked
    client = MlflowClient(tracking_uri=(run_dir / "logs" / "mlruns").resolve().as_uri())
    state = json.loads((run_dir / "logs" / "tracking.json").read_text())
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "track_toy"
    assert run.data.params["method.name"] == "lora" and run.data.params["train.iterations"] == str(ITERATIONS)
    for tag, points in expected.items():
        history = client.get_metric_history(run.info.run_id, tag)
        assert {m.step: m.value for m in history} == pytest.approx(points), tag
        assert len(history) == len(points)


def test_tracker_resume_continues_without_repeating(tmp_path):
    """A second Tracker on the same folder (what --resume makes) sends only the events it has not sent."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = {"name": "resumed", "train": {"iterations": 4}}

    def step(task: int, it: int, loss: float) -> dict:
        return {"event": "step", "task": task, "task_name": "a", "iteration": it, "loss": loss}

    events = [
        {"event": "evaluation", "after": "zero-shot", "row": [10.0, 20.0]},
        step(1, 2, 1.5),
        step(1, 4, 1.25),
    ]
    first = Tracker(["csv", "tensorboard", "mlflow"], config, tmp_path)
    first.log(events[:2], ["a", "b"])
    run_id = first.state["mlflow_run_id"]  # the process dies here: no close
    events.append({"event": "task_end", "task": 1, "task_name": "a", "row": [50.0, 30.0]})
    second = Tracker(["csv", "tensorboard", "mlflow"], config, tmp_path)
    assert second.state["delivered"] == 2 and second.state["mlflow_run_id"] == run_id
    second.log(events, ["a", "b"], finished=True)
    acc = EventAccumulator(str(tmp_path / "logs" / "tensorboard"))
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars("train/loss")] == [(2, 1.5), (4, 1.25)]
    assert [(s.step, s.value) for s in acc.Scalars("eval/seen")] == [(4, 50.0)]
    client = MlflowClient(tracking_uri=(tmp_path / "logs" / "mlruns").resolve().as_uri())
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/average")] == [
        (0, 15.0),
        (4, 40.0),
    ]
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv", newline="")))
    assert [(r["step"], r["event"]) for r in rows] == [
        ("0", "evaluation"),
        ("2", "step"),
        ("4", "step"),
        ("4", "evaluation"),
    ]


def test_logger_names_are_checked():
    with pytest.raises(ConfigError, match=r"output\.loggers\[1\]='tensorbord'.*one of 'csv', 'tensorboard'"):
        config_from_dict(_config(["csv", "tensorbord"]))
    with pytest.raises(ConfigError, match=r"output\.loggers\[1\]='csv'.*each logger once"):
        check_loggers(["csv", "csv"])
    assert config_from_dict(_config([])).output.loggers == []


def test_missing_logger_package_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(_config(["csv", "wandb"])))  # JSON is YAML
    assert main(["run", str(config), "--quiet", "--set", f"output.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "output.loggers[1]='wandb'" in err and "pip install 'rankwise[wandb]'" in err
    assert not (tmp_path / "run").exists()
