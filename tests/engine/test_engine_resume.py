"""Kill-and-resume gives exactly the accuracy matrix of an uninterrupted run."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from toy_helpers import REPO, toy_config, toy_dict

from rankwise.config import config_from_dict, load_config
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import continual
from rankwise.engine.continual import run_experiment


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing catches it."""


def _crash_on_call(monkeypatch, module, name: str, n: int) -> None:
    original = getattr(module, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise Crash(f"{name} call {n}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return run_experiment(toy_config(), tmp_path_factory.mktemp("ref") / "run", quiet=True)


# Crash windows (20 steps per task, snapshots every 5): before the first commit, between a snapshot
# and its commit, while saving a task checkpoint, and at the very last commit.
@pytest.mark.parametrize(
    "target,n",
    [
        ("write_state", 1),  # zero-shot row evaluated, never committed
        ("write_state", 4),  # task 1's iteration-15 snapshot written, not committed: resumes at 10
        ("write_dir_atomically", 10),  # while writing task 2's checkpoint dir: resumes at 15
        ("write_state", 13),  # the final commit of task 3
    ],
)
def test_crash_then_resume_matches_uninterrupted(tmp_path, monkeypatch, reference, target, n):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _crash_on_call(patch, ckpt, target, n)
        with pytest.raises(Crash):
            run_experiment(toy_config(), run_dir, quiet=True)
    result = run_experiment(toy_config(), run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, reference.accuracy_matrix)
    assert result.metrics == reference.metrics
    steps = [
        e
        for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
        if e["event"] == "step"
    ]
    ref_steps = [
        e
        for e in map(json.loads, (reference.run_dir / "events.jsonl").read_text().splitlines())
        if e["event"] == "step"
    ]
    assert [(e["task"], e["iteration"], e["loss"]) for e in steps] == [
        (e["task"], e["iteration"], e["loss"]) for e in ref_steps
    ]


def test_reference_run_learns_and_is_deterministic(tmp_path, reference):
    again = run_experiment(toy_config(), tmp_path / "again", quiet=True)
    np.testing.assert_array_equal(again.accuracy_matrix, reference.accuracy_matrix)
    m = reference.accuracy_matrix
    diag = np.diag(m[1:])
    assert diag.min() > 50.0 and diag.mean() > m[0].mean() + 25.0, m  # chance is 25%


def test_resuming_a_finished_run_returns_its_result(tmp_path, reference):
    result = run_experiment(toy_config(), reference.run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, reference.accuracy_matrix)


OVERRIDES = ["train.iterations=24", "train.batch_size=16", "train.checkpoint_every=7"]
OVERRIDES_ARGS = [a for o in OVERRIDES for a in ("--set", o)]


def _cli(run_dir, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [
        sys.executable,
        "-m",
        "rankwise.cli",
        "run",
        str(REPO / "configs" / "toy_codyra.yaml"),
        "--quiet",
        *OVERRIDES_ARGS,
        *extra,
    ]
    if "--resume" not in extra:
        cmd += ["--set", f"output.dir={run_dir}"]
    return cmd, env


def test_sigkill_subprocess_then_resume_is_exact(tmp_path):
    """A real process killed with SIGKILL mid-training, resumed from the CLI, equals an uninterrupted run."""
    killed_dir = tmp_path / "killed"
    cmd, env = _cli(killed_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = killed_dir / "state" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            s = json.loads(state.read_text())
            # training has its first resumable snapshot (task 1, iteration 7) or is past task 1. Not
            # later: on an idle machine tasks 2-3 of this toy run take well under a second, and a
            # trigger at task 2 left too little run for the kill below to land before it finished
            if s["task_index"] >= 1 or s["iteration"] >= 7:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.3))  # an arbitrary moment
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_state = json.loads(state.read_text())
    assert not killed_state["finished"]
    cmd, env = _cli(killed_dir, "--resume", str(killed_dir))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # the same run, uninterrupted, in this process
    config = load_config(REPO / "configs" / "toy_codyra.yaml", OVERRIDES)
    full = run_experiment(config, tmp_path / "full", quiet=True)
    resumed = json.loads((killed_dir / "accuracy_matrix.json").read_text())["matrix"]
    assert resumed == full.accuracy_matrix.tolist()
    metrics = json.loads((killed_dir / "metrics.json").read_text())
    assert {k: metrics[k] for k in full.metrics} == full.metrics
    ckpt.verify_dir(killed_dir / "checkpoints" / "task_3_syn2")


def test_snapshot_files_are_pickle_free(reference):
    state = ckpt.read_state(reference.run_dir / "state")
    snap = reference.run_dir / "state" / state["snapshot"]
    assert sorted(p.name for p in snap.iterdir()) == ["checksums.json", "meta.json", "tensors.safetensors"]
    assert not list(reference.run_dir.rglob("*.pt")) and not list(reference.run_dir.rglob("*.pkl"))
    assert continual.load_result(reference.run_dir).metrics["last"] == reference.metrics["last"]


@pytest.mark.parametrize("method", ["moram", "full"])
def test_crash_and_resume_is_exact_for_other_methods(tmp_path, monkeypatch, method):
    data = toy_dict(method, iterations=9, checkpoint_every=4)
    data["backbone"].update(dim=16, embed_dim=16)  # smaller still: only exactness matters here

    def config():
        return config_from_dict(copy.deepcopy(data))

    reference = run_experiment(config(), tmp_path / "ref", quiet=True)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _crash_on_call(patch, ckpt, "write_state", 6)  # task 2's iteration-8 snapshot: resumes at 4
        with pytest.raises(Crash):
            run_experiment(config(), run_dir, quiet=True)
    assert ckpt.read_state(run_dir / "state")["iteration"] == 4
    result = run_experiment(config(), run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, reference.accuracy_matrix)


# -- the two crash windows of issue 17: a real process dies (os._exit, no cleanup) at the exact write --
_DIE_AT = """
import os, sys
real = os.replace
def replace(src, dst, *a, **k):
    target = os.fspath(dst)
    if target.endswith(os.sep + {before!r}):
        os._exit(9)  # killed before this file's temp is renamed
    real(src, dst, *a, **k)
    if target.endswith(os.sep + {after!r}) and {condition}:
        os._exit(9)  # killed right after this rename
os.replace = replace
from rankwise.cli import main
sys.exit(main(sys.argv[1:]))
"""


SHORT = ["train.iterations=6", "scenario.num_tasks=2"]  # a smaller run still: only the windows matter
SHORT_ARGS = [a for o in SHORT for a in ("--set", o)]


def _die_at(tmp_path, run_dir, before="", after="", condition="True"):
    script = tmp_path / "die.py"
    script.write_text(_DIE_AT.format(before=before or "\0", after=after or "\0", condition=condition))
    cmd, env = _cli(run_dir, *SHORT_ARGS)
    proc = subprocess.run([sys.executable, str(script), *cmd[3:]], env=env, capture_output=True, timeout=300)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]


def _uninterrupted(tmp_path):
    return run_experiment(_short_config(), tmp_path / "full", quiet=True)


def _short_config():
    return load_config(REPO / "configs" / "toy_codyra.yaml", OVERRIDES + SHORT)


def test_kill_before_config_yaml_is_renamed_leaves_a_folder_a_plain_run_reuses(tmp_path):
    run_dir = tmp_path / "run"
    _die_at(tmp_path, run_dir, before="config.yaml")
    assert [p.name for p in run_dir.glob(".config.yaml.*.tmp")], "the temp file a kill leaves"
    cmd, env = _cli(run_dir, *SHORT_ARGS)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr  # no --overwrite needed: only our leftovers were there
    assert "stale lock" in out.stderr  # the dead process's lock, taken over
    assert json.loads((run_dir / "accuracy_matrix.json").read_text())["matrix"] == (
        _uninterrupted(tmp_path).accuracy_matrix.tolist()
    )
    assert not list(run_dir.glob("*.tmp")) and not (run_dir / ".rankwise.lock").exists()


def test_kill_right_after_the_final_commit_leaves_a_complete_run(tmp_path):
    run_dir = tmp_path / "run"
    finished = "__import__('json').load(open(target))['finished']"
    _die_at(tmp_path, run_dir, after="state.json", condition=finished)
    assert json.loads((run_dir / "state" / "state.json").read_text())["finished"]
    full = _uninterrupted(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())  # written before the commit
    assert {k: metrics[k] for k in full.metrics} == full.metrics
    cmd, env = _cli(run_dir, *SHORT_ARGS, "--resume", str(run_dir))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout == "", out
    assert "already finished" in out.stderr and "Traceback" not in out.stderr
    result = run_experiment(_short_config(), run_dir, resume=True, quiet=True)
    assert result.already_finished and result.accuracy_matrix.tolist() == full.accuracy_matrix.tolist()
