"""benchmarks/protocol.py: the configs it generates are valid, the sweep picks on validation Last,
and the summaries / paired differences equal what the run directories hold (fake finished runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rankwise.config import config_from_dict
from rankwise.metrics import summarize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def protocol(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import protocol as module

    return module


def test_every_generated_config_is_valid(protocol, tmp_path):
    for name, track in protocol.TRACKS.items():
        for method in track.methods:
            for setting in protocol.sweep_settings(track, method) or [{}]:
                data = protocol.make_config(track, method, setting, track.sweep_tasks, 0, "validation", tmp_path / "r")
                config = config_from_dict(data)
                assert config.scenario.config.evaluate_on == "validation", name
                assert config.eval.item_scores and config.threads == 1
        chosen = {m: {"chosen": (protocol.sweep_settings(track, m) or [{}])[0]} for m in track.methods}
        configs = protocol.main_configs(track, tmp_path, list(track.methods), list(track.orders), [0, 1, 2], chosen)
        assert len(configs) == len(track.orders) * (1 + 3 * (len(track.methods) - 1))  # zero-shot once
        for data in configs:
            config = config_from_dict(data)
            assert config.scenario.config.evaluate_on == "test"
            assert config.scenario.config.tasks in [list(o) for o in track.orders.values()]


def fake_run(run_dir: Path, items: list[np.ndarray], wall: float = 60.0) -> None:
    """A finished run: per-task (T + 1, n) item scores, the matrix of their means, a cost record."""
    tasks = [f"t{i}" for i in range(len(items))]
    matrix = np.stack([s.mean(axis=1) for s in items], axis=1)
    (run_dir / "item_scores").mkdir(parents=True)
    for r in range(len(tasks) + 1):
        record = {"row": r, "after": str(r), "tasks": tasks, "items": {t: s[r].tolist() for t, s in zip(tasks, items)}}
        (run_dir / "item_scores" / f"row_{r:03d}.json").write_text(json.dumps(record))
    (run_dir / "accuracy_matrix.json").write_text(json.dumps({"tasks": tasks, "matrix": matrix.tolist()}))
    cost = {"wall_s": wall, "cpu_s": wall, "peak_rss_mib": 100.0, "threads": 1, "attempts": 1}
    (run_dir / "cost.json").write_text(json.dumps(cost))


def test_summaries_and_paired_differences_from_the_runs(protocol, tmp_path):
    rng = np.random.default_rng(0)
    zero = [np.where(rng.random((1, 40)) < 0.5, 100.0, 0.0) for _ in range(3)]

    def run_items(p):
        return [np.concatenate([z, np.where(rng.random((3, 40)) < p, 100.0, 0.0)]) for z in zero]

    fake_run(tmp_path / "published" / "zero-shot__s0", [np.repeat(z, 4, axis=0) for z in zero])
    for seed in (0, 1, 2):
        fake_run(tmp_path / "published" / f"lora__s{seed}", run_items(0.6))
        fake_run(tmp_path / "published" / f"moram__s{seed}", run_items(0.8))
    out = protocol.summarise(tmp_path, ["zero-shot", "lora", "moram"], ["published"], [0, 1, 2])["published"]
    lasts = [
        summarize(json.loads((tmp_path / "published" / f"lora__s{s}" / "accuracy_matrix.json").read_text())["matrix"])["last"]
        for s in (0, 1, 2)
    ]
    summary = out["methods"]["lora"]["summary"]["last"]
    assert summary["mean"] == pytest.approx(np.mean(lasts))
    assert summary["ci95"] == pytest.approx(4.3027 * np.std(lasts, ddof=1) / np.sqrt(3))  # t_{0.975, 2}
    assert out["methods"]["zero-shot"]["summary"]["plasticity"]["mean"] == 0.0
    pair = next(p for p in out["paired"] if p["metric"] == "last")
    moram_lasts = out["methods"]["moram"]["summary"]["last"]["values"]
    assert (pair["a"], pair["b"]) == ("lora", "moram")
    assert pair["difference"] == pytest.approx(np.mean(lasts) - np.mean(moram_lasts))
    assert pair["high"] < 0 and pair["p_value"] < 0.01  # 60% vs 80% on 120 items per seed
    table = protocol.tables(protocol.TEXT, {"main": {"published": out}})
    assert "| lora | 3 |" in table and "| lora − moram |" in table


def test_sweep_picks_the_best_validation_last_and_skips_finished_runs(protocol, tmp_path):
    track = protocol.TEXT
    for setting in protocol.sweep_settings(track, "lora"):
        good = setting["train.lr"] == 2.0e-3
        items = [np.full((3, 10), 100.0 if good else 50.0) for _ in range(2)]
        fake_run(tmp_path / "sweep" / f"lora__{protocol.label(setting)}", items)
    result = protocol.sweep_stage(track, tmp_path, ["lora"], workers=1)  # every run has cost.json: none runs
    assert result["lora"]["chosen"] == {"train.lr": 2.0e-3}
    assert result["lora"]["criterion"] == "validation Last" and len(result["lora"]["grid"]) == 3


def test_run_job_records_cost_while_running_and_adds_an_earlier_attempt(protocol, tmp_path, monkeypatch):
    """A real (toy) run through run_job: heartbeat records are written while the child runs (so a killed
    driver keeps them), the next attempt adds them, and a finished run's cost.json replaces them."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "engine"))
    from toy_helpers import toy_dict

    data = toy_dict("lora", iterations=20, checkpoint_every=1000)
    data["threads"] = 1
    run_dir = tmp_path / "runs" / "lora__s0"
    data["output"] = {"dir": str(run_dir)}
    partial = tmp_path / "runs" / "lora__s0.partial_cost.json"
    partial.parent.mkdir(parents=True)
    partial.write_text(json.dumps({"wall_s": 100.0, "cpu_s": 50.0, "peak_rss_mib": 1.0, "attempts": 1}))
    beats = []
    real_write = protocol.io.write_json
    monkeypatch.setattr(protocol.io, "write_json", lambda p, v: (beats.append(dict(v)), real_write(p, v)))
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    cost = protocol.run_job(data, tmp_path / "log.txt", heartbeat_s=0.0)
    assert (run_dir / "cost.json").exists() and not partial.exists()
    running = [b for b in beats if b.get("running")]
    assert running, "no heartbeat while the child ran"
    assert all(b["cpu_s"] >= 50.0 and b["attempts"] == 2 for b in running)  # the earlier attempt included
    assert cost["attempts"] == 2 and cost["cpu_s"] > 50.0 and cost["wall_s"] > 100.0 and cost["peak_rss_mib"] > 50
    assert json.loads((run_dir / "cost.json").read_text()) == cost
