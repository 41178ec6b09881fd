"""benchmarks/protocol.py: the configs it generates are valid, the sweep picks on validation Last,
finished runs are recorded and never rerun, and the summaries / paired differences equal what the
records hold (fake finished runs)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rankwise.config import config_from_dict

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
        jobs = protocol.main_jobs(track, tmp_path, tmp_path / "rec", list(track.methods), list(track.orders), [0, 1, 2], chosen)
        assert len(jobs) == len(track.orders) * (1 + 3 * (len(track.methods) - 1))  # zero-shot once
        assert len({j.record for j in jobs}) == len(jobs) and all(j.with_items for j in jobs)
        for job in jobs:
            config = config_from_dict(job.config)
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


def fake_record(protocol, records: Path, group: str, name: str, items: list[np.ndarray], config=None) -> None:
    """A fake finished run (`fake_run`) turned into its record, as `run_all` does after a run."""
    run_dir = records.parent / "runs" / group / name
    fake_run(run_dir, items)
    config = {**(config or {}), "name": name, "output": {"dir": str(run_dir)}}
    protocol.write_record(records / group / f"{name}.json.gz", protocol.make_record(config, with_items=group != "sweep"))


def test_summaries_and_paired_differences_from_the_records(protocol, tmp_path):
    rng = np.random.default_rng(0)
    zero = [np.where(rng.random((1, 40)) < 0.5, 100.0, 0.0) for _ in range(3)]
    records = tmp_path / "rec"

    def run_items(p):
        return [np.concatenate([z, np.where(rng.random((3, 40)) < p, 100.0, 0.0)]) for z in zero]

    fake_record(protocol, records, "published", "zero-shot__s0", [np.repeat(z, 4, axis=0) for z in zero])
    expected_lasts = {}
    for seed in (0, 1, 2):
        for method, p in (("lora", 0.6), ("moram", 0.8)):
            items = run_items(p)
            expected_lasts[method, seed] = np.mean([a[-1].mean() for a in items])  # Last: the final row's mean
            fake_record(protocol, records, "published", f"{method}__s{seed}", items)
    shutil.rmtree(tmp_path / "runs")  # the report reads the records only
    out = protocol.summarise(protocol.TEXT, records, [0, 1, 2])["published"]
    lasts = [expected_lasts["lora", s] for s in (0, 1, 2)]
    summary = out["methods"]["lora"]["summary"]["last"]
    assert summary["mean"] == pytest.approx(np.mean(lasts))
    assert summary["ci95"] == pytest.approx(4.3027 * np.std(lasts, ddof=1) / np.sqrt(3))  # t_{0.975, 2}
    assert out["methods"]["zero-shot"]["summary"]["plasticity"]["mean"] == 0.0
    pair = next(p for p in out["paired"] if p["metric"] == "last")
    moram_lasts = [expected_lasts["moram", s] for s in (0, 1, 2)]
    assert (pair["a"], pair["b"]) == ("lora", "moram")
    assert pair["difference"] == pytest.approx(np.mean(lasts) - np.mean(moram_lasts))
    assert pair["high"] < 0 and pair["p_value"] < 0.01  # 60% vs 80% on 120 items per seed
    table = protocol.tables(protocol.TEXT, {"main": {"published": out}})
    assert "| lora | - | 3 |" in table and "| lora − moram | 0, 1, 2 |" in table

    # a method recorded without per-item scores (imported from an earlier results file): its pairs come
    # from the earlier report when they were computed on the same seeds, and are never invented
    seed0 = protocol.load_record(records / "published" / "moram__s0.json.gz")
    for seed in (0, 1, 2):
        path = records / "published" / f"moram__s{seed}.json.gz"
        protocol.write_record(path, {**protocol.load_record(path), "items": None})
    earlier = {"published": {"paired": [{**p, "difference": 99.0} for p in out["paired"]]}}
    again = protocol.summarise(protocol.TEXT, records, [0, 1, 2], earlier=earlier)["published"]
    assert [p["difference"] for p in again["paired"]] == [99.0] * 4
    assert protocol.summarise(protocol.TEXT, records, [0, 1, 2])["published"]["paired"] == []
    shifted = {"published": {"paired": [{**p, "seeds": [0, 1]} for p in out["paired"]]}}
    assert protocol.summarise(protocol.TEXT, records, [0, 1, 2], earlier=shifted)["published"]["paired"] == []
    # one seed re-run with per-item scores: paired over that seed alone, and the pair says so
    protocol.write_record(records / "published" / "moram__s0.json.gz", seed0)
    one = protocol.summarise(protocol.TEXT, records, [0, 1, 2])["published"]["paired"]
    last = next(p for p in one if p["metric"] == "last")
    assert last["seeds"] == [0] and last["difference"] == pytest.approx(expected_lasts["lora", 0] - expected_lasts["moram", 0])


def test_sweep_picks_the_best_validation_last_and_skips_recorded_runs(protocol, tmp_path, monkeypatch):
    track = protocol.TEXT
    records = tmp_path / "rec"
    for setting in protocol.sweep_settings(track, "lora"):
        good = setting["train.lr"] == 2.0e-3
        items = [np.full((3, 10), 100.0 if good else 50.0) for _ in range(2)]
        name = f"lora__{protocol.label(setting)}"
        config = protocol.make_config(track, "lora", setting, track.sweep_tasks, 0, "validation", tmp_path / name)
        fake_record(protocol, records, "sweep", name, items, config=config)
    shutil.rmtree(tmp_path / "runs")
    result = protocol.sweep_stage(track, tmp_path / "runs", records, ["lora"], workers=1)  # every run recorded: none runs
    assert not (tmp_path / "runs" / "sweep").exists()
    assert result["lora"]["chosen"] == {"train.lr": 2.0e-3}
    assert result["lora"]["criterion"] == "validation Last" and len(result["lora"]["grid"]) == 3

    assert protocol.sweep_covers(result["lora"], track, "lora")
    assert not protocol.sweep_covers(None, track, "lora")

    # a grid extended after its sweep: the main stage refuses the old choice until the sweep is rerun
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"protocol": {}, "sweep": result}))
    wider = copy.deepcopy(track)
    wider.sweep["lora"] = {"train.lr": [5.0e-4, *track.sweep["lora"]["train.lr"]]}
    assert not protocol.sweep_covers(result["lora"], wider, "lora")
    monkeypatch.setitem(protocol.TRACKS, "text", wider)
    with pytest.raises(SystemExit, match=r"sweep of \['lora'\] does not cover"):
        protocol.main(["--stage", "main", "--methods", "lora", "--out", str(out), "--runs", str(tmp_path / "runs")])
    assert not (tmp_path / "runs" / "published").exists()  # nothing ran

    # a record made with another config is an error naming what differs, never silently replaced
    changed = copy.deepcopy(track)
    changed.base["train"]["iterations"] = 7
    with pytest.raises(SystemExit, match="differs in train.iterations"):
        protocol.sweep_stage(changed, tmp_path / "runs", records, ["lora"], workers=1)


def test_refinement_runs_around_the_grid_best_and_can_win(protocol, tmp_path, monkeypatch):
    """``Track.refine`` moves one key at a time around the grid's best setting: its runs are part of
    the sweep's rows (stage "refine"), win when their validation Last is higher, and a recorded sweep
    whose refinement was made around another best (or not made) does not cover the track."""
    track = copy.deepcopy(protocol.TEXT)
    track.sweep = {"moram": {"train.lr": [1.0e-3, 2.0e-3], "method.tau": [0.1]}}
    track.refine = {"moram": {"method.top_k": [8, 32]}}
    records = tmp_path / "rec"
    score = {(1.0e-3, None): 50.0, (2.0e-3, None): 70.0, (2.0e-3, 8): 60.0, (2.0e-3, 32): 80.0}
    ran = []

    def fake_run_all(jobs, workers, logs):  # "runs" a job without a record: a record with its score
        for job in (j for j in jobs if not j.record.exists()):
            method = job.config["method"]
            key = (job.config["train"]["lr"], method.get("top_k"))
            ran.append(key)
            fake_record(protocol, records, "sweep", job.record.name.removesuffix(".json.gz"),
                        [np.full((3, 10), score[key]) for _ in range(2)], config=job.config)  # fmt: skip
        return []

    monkeypatch.setattr(protocol, "run_all", fake_run_all)
    result = protocol.sweep_stage(track, tmp_path / "runs", records, ["moram"], workers=1)["moram"]
    assert ran == [(1.0e-3, None), (2.0e-3, None), (2.0e-3, 8), (2.0e-3, 32)]  # the grid, then around its best
    assert [r["stage"] for r in result["grid"]] == ["grid", "grid", "refine", "refine"]
    assert result["chosen"] == {"method.tau": 0.1, "train.lr": 2.0e-3, "method.top_k": 32}
    assert protocol.sweep_covers(result, track, "moram")
    table = protocol.tables(track, {"sweep": {"moram": result}})
    assert "| moram | tau=0.1,top_k=32,lr=0.002 | refine | 80.0 |" in table and table.rstrip().endswith("| yes |")
    assert "| moram | tau=0.1,lr=0.002 | grid | 70.0 |" in table and table.count("| yes |") == 1
    grid_only = {**result, "grid": result["grid"][:2]}
    assert not protocol.sweep_covers(grid_only, track, "moram")  # refinement missing
    moved = copy.deepcopy(result)  # a grid whose best is now lr 1e-3: refined around 2e-3, not covered
    moved["grid"][0]["validation"]["last"] = 99.0
    assert not protocol.sweep_covers(moved, track, "moram")
    score[2.0e-3, 32] = 65.0  # a refinement that loses leaves the grid's choice
    for path in (records / "sweep").glob("*top_k=32*"):
        path.unlink()
    shutil.rmtree(tmp_path / "runs")
    again = protocol.sweep_stage(track, tmp_path / "runs", records, ["moram"], workers=1)["moram"]
    assert ran[4:] == [(2.0e-3, 32)] and again["chosen"] == {"method.tau": 0.1, "train.lr": 2.0e-3}


def test_holm_adjusted_significance_in_the_report(protocol):
    """Per stream and metric the pairs form one family: p-values are Holm-adjusted (a bootstrap p of 0
    enters as its resolution 2 / n_boot), the significant cells are bold and listed with the better
    method first, and a pair over one seed says so."""

    def pair(a, b, metric, d, p, seeds=(0, 1, 2)):
        return {"a": a, "b": b, "metric": metric, "difference": d, "low": d - 1, "high": d + 1, "p_value": p,
                "n_seeds": len(seeds), "n_boot": 4000, "seeds": list(seeds)}  # fmt: skip

    pairs = [pair("lora", "codyra", "last", -5.0, 0.0), pair("lora", "moram", "last", -2.0, 0.02),
             pair("codyra", "moram", "last", 3.0, 0.03, seeds=(0,)), pair("lora", "codyra", "bwt", 1.0, 0.04)]  # fmt: skip
    protocol.add_holm(pairs)
    # last: sorted 0.0005 x 3 = 0.0015, 0.02 x 2 = 0.04, 0.03 x 1 = 0.03 -> 0.04 (monotone); bwt alone: 0.04
    assert [p["p_holm"] for p in pairs] == pytest.approx([0.0015, 0.04, 0.04, 0.04])
    pairs.append(pair("lora", "moram", "bwt", 2.0, 0.03))
    protocol.add_holm(pairs)
    assert [p["p_holm"] for p in pairs[3:]] == pytest.approx([0.06, 0.06])  # 0.03 x 2, then max(0.04, 0.06)
    data = {"methods": {}, "paired": pairs}
    lines = protocol.significant(data)
    assert lines[2] == ("- Last: codyra > lora +5.00 [+4.00, +6.00]; moram > lora +2.00 [+1.00, +3.00]; "
                        "codyra > moram +3.00 [+2.00, +4.00] (seed 0 only)")  # fmt: skip
    assert lines[3] == "- BWT: no significant difference" and lines[0] == "- Transfer: no significant difference"
    table = protocol.tables(protocol.TEXT, {"main": {"published": data}})
    assert "**-5.00 [-6.00, -4.00] p<0.0005**" in table and "| +1.00 [+0.00, +2.00] p=0.040 |" in table
    assert "family: the 3 pairs of this stream" in table


def test_report_covers_every_recorded_method_and_order(protocol, tmp_path, capsys):
    """`--stage report --methods lora --orders second` still reports every recorded run: a command run
    for part of the protocol never drops the other parts from the results file."""
    out = tmp_path / "results.json"
    records = protocol.records_dir(out)
    assert records == tmp_path / "results_runs"
    rng = np.random.default_rng(1)
    for order in ("published", "second"):
        for seed in (0, 1, 2):
            items = [np.where(rng.random((10, 20)) < 0.7, 100.0, 0.0) for _ in range(9)]
            fake_record(protocol, records, order, f"lora__s{seed}", items)
    fake_record(protocol, records, "sweep", "lora__lr=0.001", [np.full((3, 4), 100.0)] * 2)
    assert set(protocol.summarise(protocol.TEXT, records, [0, 1, 2])) == {"published", "second"}
    (records / "second").rename(tmp_path / "second")
    assert set(protocol.summarise(protocol.TEXT, records, [0, 1, 2])) == {"published"}  # no empty table
    (tmp_path / "second").rename(records / "second")
    protocol.main(["--stage", "report", "--methods", "codyra", "--orders", "second", "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results["main"]) == {"published", "second"}
    assert results["main"]["published"]["methods"]["lora"]["seeds"] == [0, 1, 2]
    assert results["cost"]["runs"] == 7 and results["cost"]["cpu_hours"] == pytest.approx(7 * 60 / 3600, abs=0.01)
    printed = capsys.readouterr().out
    assert "**published order**" in printed and "more than one code version" not in printed
    # the printed tables are kept beside the results file, so docs quote a generated file
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.startswith("# Protocol report: text track") and printed.strip() in markdown
    assert "| lora | - | 3 |" in markdown  # no recorded sweep: no chosen setting to name

    # runs from different code are named in the report (a table mixing them is read with that in mind)
    path = records / "published" / "lora__s1.json.gz"
    record = protocol.load_record(path)
    record["code"] = [{"rankwise": "0.1.0", "commit": "0123456789abcdef" * 2 + "01234567", "dirty": False},
                      {"rankwise": "0.1.0", "commit": "fedcba9876543210" * 2 + "fedcba98", "dirty": True}]  # fmt: skip
    protocol.write_record(path, record)
    protocol.main(["--stage", "report", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["main"]["published"]["methods"]["lora"]["code"] == {
        "0": "imported", "1": "0123456789ab,fedcba987654+dirty", "2": "imported"}  # fmt: skip
    printed = capsys.readouterr().out
    assert "- lora: s0 imported; s1 0123456789ab,fedcba987654+dirty; s2 imported" in printed
    assert printed.count("more than one code version") == 1  # the second order's runs share one
    assert "- 0123456789ab: not in this clone's history" in printed

    # with a recorded sweep the main table names each method's chosen setting
    results["sweep"] = {"lora": {"tasks": ["agnews", "yelp"], "chosen": {"train.lr": 2.0e-3}, "grid": [
        {"setting": {"train.lr": 2.0e-3}, "validation": {"last": 60.0, "average": 55.0, "plasticity": 9.0},
         "cost": {"cpu_s": 120.0}}]}}  # fmt: skip
    out.write_text(json.dumps(results))
    protocol.main(["--stage", "report", "--out", str(out)])
    markdown = (tmp_path / "results.md").read_text()
    assert "| lora | lr=0.002 | 3 |" in markdown and "| lora | lr=0.002 | grid | 60.0 | 55.0 | +9.0 | 2.0 min | yes |" in markdown


def test_src_changes_between_the_commits_of_a_mixed_table(protocol, tmp_path, monkeypatch):
    """A table mixing code versions says, per consecutive pair of its commits, which files under src/
    differ (a change of docs or benchmarks only reads "src/ identical")."""
    import os
    import subprocess

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)

    def commit(path: str, text: str, when: int) -> str:
        (repo / path).write_text(text)
        env = {**os.environ, "GIT_AUTHOR_DATE": f"{when} +0000", "GIT_COMMITTER_DATE": f"{when} +0000", "HOME": str(tmp_path),
               "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
        for args in (["add", "-A"], ["commit", "-qm", path]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              env=env).stdout.strip()  # fmt: skip

    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    first = commit("src/a.py", "x = 1\n", 1_700_000_000)
    second = commit("README", "docs\n", 1_700_000_100)
    third = commit("src/b.py", "y = 2\n", 1_700_000_200)
    monkeypatch.setattr(protocol, "ROOT", repo)
    lines = protocol.src_changes([third, first, "f" * 40, second, first])
    assert lines == [f"- {first[:12]} -> {second[:12]}: src/ identical",
                     f"- {second[:12]} -> {third[:12]}: src/ differs in b.py",
                     f"- {'f' * 12}: not in this clone's history"]  # fmt: skip


def test_results_files_and_a_file_that_is_not_the_protocols(protocol, tmp_path):
    """The protocol writes text_mtil.json / llm_cl.json (the quick tables are *_quick.json) and never
    merges its results into a file some other script wrote."""
    assert protocol.TEXT.out == "benchmarks/results/text_mtil.json"
    assert protocol.LLM.out == "benchmarks/results/llm_cl.json"
    quick = tmp_path / "text_mtil.json"
    quick.write_text(json.dumps({"benchmark": "text-mtil", "results": {}}))
    with pytest.raises(SystemExit, match="not a protocol results file"):
        protocol.main(["--stage", "report", "--out", str(quick)])
    assert json.loads(quick.read_text()) == {"benchmark": "text-mtil", "results": {}}  # untouched


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
    monkeypatch.setattr(protocol.io, "write_json", lambda p, v: (beats.append(v), real_write(p, v)))
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    cost = protocol.run_job(data, tmp_path / "log.txt", heartbeat_s=0.0)
    assert (run_dir / "cost.json").exists() and not partial.exists()
    running = [b for b in beats if isinstance(b, dict) and b.get("running")]
    assert running, "no heartbeat while the child ran"
    assert all(b["cpu_s"] >= 50.0 and b["attempts"] == 2 for b in running)  # the earlier attempt included
    assert cost["attempts"] == 2 and cost["cpu_s"] > 50.0 and cost["wall_s"] > 100.0 and cost["peak_rss_mib"] > 50
    assert json.loads((run_dir / "cost.json").read_text()) == cost
    code = json.loads((tmp_path / "runs" / "lora__s0.code.json").read_text())  # one entry per attempt
    assert len(code) == 1 and set(code[0]) == {"rankwise", "commit", "dirty"}
    assert protocol.make_record(data, with_items=False)["code"] == code


def test_run_job_refuses_a_finished_run_directory_of_another_config(protocol, tmp_path):
    run_dir = tmp_path / "lora__s0"
    fake_run(run_dir, [np.full((2, 4), 100.0)])
    config = {"seed": 0, "threads": 1, "train": {"lr": 1e-3}, "output": {"dir": str(run_dir)}}
    (tmp_path / "lora__s0.yaml").write_text(json.dumps({**config, "train": {"lr": 2e-3}}))
    with pytest.raises(RuntimeError, match="finished with another config"):
        protocol.run_job(config, tmp_path / "log.txt")
    (tmp_path / "lora__s0.yaml").write_text(json.dumps(config))
    assert protocol.run_job(config, tmp_path / "log.txt")["wall_s"] == 60.0  # the same config: not run again
