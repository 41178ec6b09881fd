"""Catalog: the run directory. Names that become paths, --overwrite, locking, crash windows, full disks,
corrupt run files.

Every case checks the exit code, that the message is one line naming the field or file, and that every
file that existed around the case (the run's parent folder, the working directory, victim folders) is
byte-identical afterwards. A failing case says ``OUTCOME=<category>`` (traceback / accepted / data lost /
unclear), which is how the catalog's before/after figures are counted.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bad_inputs.catalog import REPO, CliResult, outcome, run_cli, run_main, tree_digest

CONFIG = REPO / "configs" / "toy_codyra.yaml"
SMALL = [
    "--set", "train.iterations=6",
    "--set", "train.batch_size=16",
    "--set", "train.checkpoint_every=4",
    "--set", "scenario.train_per_class=8",
    "--set", "scenario.num_tasks=2",
]  # fmt: skip
LOCK = ".rankwise.lock"
MARKER = ".rankwise-run.json"


def _digest(root: Path, *exclude: Path) -> dict[str, str]:
    """tree_digest of ``root`` without the folders a case is allowed to change."""
    skip = [str(p.relative_to(root)) for p in exclude]
    return {
        k: v for k, v in tree_digest(root).items() if not any(k == s or k.startswith(s + os.sep) for s in skip)
    }


def _check(result: CliResult, before: dict, after: dict, *needles: str, code: int = 2) -> str:
    got = outcome(result, before, after, code, needles)
    lost = sorted(k for k, v in before.items() if after.get(k) != v)[:6]
    assert got == "clean", f"OUTCOME={got}: rc={result.returncode} stderr={result.stderr[-1500:]!r} changed={lost}"
    return result.error_lines[0]


def _user_folder(path: Path) -> Path:
    """A folder of the user's own files, the kind a bad path could clobber."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text("my: own config\n")
    (path / "events.jsonl").write_text('{"mine": 1}\n')
    (path / "notes.txt").write_text("do not lose me\n")
    return path


def _config_file(folder: Path, **changes) -> Path:
    """The toy config with top-level / dotted changes (values YAML-escaped, so NUL survives)."""
    data = yaml.safe_load(CONFIG.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cfg_{len(list(folder.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished small toy run (copied by each case that needs one)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_main("run", str(CONFIG), *SMALL, "--set", f"output.dir={run_dir}", "--quiet")
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory) -> Path:
    """The same run stopped (as by a kill) after task 1's iteration-4 snapshot was committed."""
    from rankwise.config import load_config
    from rankwise.engine import checkpoint as ckpt
    from rankwise.engine.continual import run_experiment

    class Crash(BaseException):
        pass

    real, calls = ckpt.write_state, [0]

    def crash_third(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise Crash
        return real(*args, **kwargs)

    run_dir = tmp_path_factory.mktemp("unfinished") / "run"
    ckpt.write_state = crash_third
    try:
        with pytest.raises(Crash):
            run_experiment(load_config(CONFIG, [o for o in SMALL if o != "--set"]), run_dir, quiet=True)
    finally:
        ckpt.write_state = real
    assert json.loads((run_dir / "state" / "state.json").read_text())["iteration"] == 4
    return run_dir


def _matrix(run_dir: Path) -> list:
    return json.loads((run_dir / "accuracy_matrix.json").read_text())["matrix"]


# -- names that become paths -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,needle",
    [
        ("..", "name"),  # runs/.. is the working directory
        (".", "name"),
        ("a/../../victim", "name"),
        ("a\\b", "name"),
        ("a\0b", "name"),
        ("n" * 300, "255"),
        ("", "name"),
    ],
    ids=["dotdot", "dot", "separator", "backslash", "nul", "too_long", "empty"],
)
def test_run_name_that_is_not_one_folder_name_is_refused(tmp_path, name, needle):
    work = _user_folder(tmp_path / "work")
    _user_folder(tmp_path / "victim")
    _user_folder(work / "runs")
    config = _config_file(tmp_path / "cfg", name=name)
    before = _digest(tmp_path)
    result = run_main("run", str(config), *SMALL, "--quiet", cwd=work)
    line = _check(result, before, _digest(tmp_path), "name", needle)
    assert "Traceback" not in line


@pytest.mark.parametrize("kind", ["file", "under_file", "path_max", "name_max", "nul"])
def test_output_dir_that_cannot_be_a_run_directory_is_refused(tmp_path, kind):
    victim = _user_folder(tmp_path / "victim")
    target = {
        "file": victim / "notes.txt",
        "under_file": victim / "notes.txt" / "run",
        "path_max": tmp_path.joinpath(*["d" * 200] * 25),
        "name_max": tmp_path / ("d" * 300),
        "nul": tmp_path / "a\0b",
    }[kind]
    config = _config_file(tmp_path / "cfg", output__dir=str(target))
    before = _digest(tmp_path)
    result = run_main("run", str(config), *SMALL, "--quiet", cwd=victim)
    _check(result, before, _digest(tmp_path), "output.dir")


def test_task_names_never_lead_outside_the_run_directory(tmp_path, monkeypatch):
    """A task named ``x/../../../victim`` (an image-folder task may be) stays inside the run directory."""
    import rankwise.scenarios.synthetic as synthetic
    from rankwise.config import load_config
    from rankwise.engine.continual import run_experiment

    original = synthetic.build_scenario

    def escaping(config, seed):
        tasks = original(config, seed)
        tasks[0].name = "x/../../../victim"
        tasks[1].name = "y" * 400  # longer than any file-system name
        return tasks

    monkeypatch.setattr(synthetic, "build_scenario", escaping)
    run_dir = tmp_path / "a" / "b" / "run"
    victim = _user_folder(tmp_path / "a" / "b" / "victim")  # where checkpoints/task_1_x/../../../victim lands
    _user_folder(tmp_path / "victim")
    before = _digest(tmp_path, run_dir)
    overrides = [o for o in SMALL if o != "--set"]
    result = run_experiment(load_config(CONFIG, overrides), run_dir, quiet=True)
    assert _digest(tmp_path, run_dir) == before, "OUTCOME=data lost"
    assert sorted(os.listdir(victim)) == ["config.yaml", "events.jsonl", "notes.txt"]
    for path in (run_dir / "checkpoints").iterdir():
        assert path.resolve().parent == (run_dir / "checkpoints").resolve() and len(path.name) <= 255
    assert result.task_names[0] == "x/../../../victim"


# -- --overwrite only replaces rankwise runs ------------------------------------------------------------
def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    mine = _user_folder(tmp_path / "mine")
    before = _digest(tmp_path)
    result = run_main("run", str(CONFIG), *SMALL, "--set", f"output.dir={mine}", "--overwrite", "--quiet")
    _check(result, before, _digest(tmp_path), "output.dir", "not a rankwise run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_overwrite_of_the_working_directory_is_refused(tmp_path, finished):
    work = _user_folder(tmp_path / "work")
    before = _digest(tmp_path)
    result = run_main("run", str(CONFIG), *SMALL, "--set", "output.dir=.", "--overwrite", "--quiet", cwd=work)
    _check(result, before, _digest(tmp_path), "output.dir")
    # even when the working directory is a run: it cannot be moved aside from under the user
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _digest(tmp_path)
    result = run_main("run", str(CONFIG), *SMALL, "--set", "output.dir=.", "--overwrite", "--quiet", cwd=run)
    _check(result, before, _digest(tmp_path), "output.dir", "working directory")


def test_overwrite_moves_a_run_aside_even_one_made_before_the_marker(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / MARKER).unlink(missing_ok=True)  # a run directory written by an older rankwise
    old = tree_digest(run)
    result = run_main("run", str(CONFIG), *SMALL, "--set", f"output.dir={run}", "--overwrite", "--quiet")
    assert result.returncode == 0, result.stderr
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(backups) == 1 and tree_digest(backups[0]) == old
    assert (run / MARKER).is_file() and _matrix(run) == _matrix(finished)


# -- two processes, one run directory ---------------------------------------------------------------
def _cli_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rankwise.cli", "run", str(CONFIG), "--quiet", *extra,
            "--set", f"output.dir={run_dir}"]  # fmt: skip


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        _cli_cmd(run_dir, "--set", "train.iterations=100000", "--set", "train.checkpoint_every=1000"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while not (run_dir / "config.yaml").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        config_before = (run_dir / "config.yaml").read_bytes()
        # another method, and once with --overwrite: both refused while the first runs
        for extra in (["--set", "train.lr=0.01"], ["--overwrite"]):
            second = run_cli("run", str(CONFIG), "--quiet", *extra, "--set", f"output.dir={run_dir}")
            line = _check(second, {}, {}, "output.dir", str(first.pid), socket.gethostname())
            assert "in use" in line
        assert (run_dir / "config.yaml").read_bytes() == config_before
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed holder left a stale lock: it no longer blocks (the run is refused for what it is)
    assert (run_dir / LOCK).is_file()
    again = run_cli("run", str(CONFIG), "--quiet", "--set", f"output.dir={run_dir}")
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    assert "unfinished run" in again.stderr and "in use" not in again.stderr


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    result = run_main("run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "stale lock" in result.stderr and str(dead.pid) in result.stderr
    assert not (run / LOCK).exists() and (run / "metrics.json").is_file()


def test_a_lock_held_by_another_host_is_refused_with_how_to_clear_it(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": "other-host.example", "started": "x"}))
    before = _digest(tmp_path)
    result = run_main("run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet")
    line = _check(result, before, _digest(tmp_path), "other-host.example", LOCK)
    assert "in use" in line


# -- crash windows ------------------------------------------------------------------------------------
def test_resume_of_a_finished_run_says_it_is_finished(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _digest(tmp_path)
    result = run_main("run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet")
    line = _check(result, before, _digest(tmp_path), str(run), "finished", code=0)
    assert result.stdout == "", line


def test_kill_after_the_final_commit_before_metrics_json_resumes(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()  # what a kill between the last commit and metrics.json left
    result = run_main("run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet")
    assert result.returncode == 0, "OUTCOME=traceback" if "Traceback" in result.stderr else result.stderr
    assert json.loads((run / "metrics.json").read_text()) == json.loads((finished / "metrics.json").read_text())


@pytest.mark.parametrize("resume", [False, True], ids=["run", "resume"])
def test_a_folder_holding_only_our_temp_files_counts_as_empty(tmp_path, finished, resume):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.yaml.k3j2h1a0.tmp").write_text("name: half-written\n")  # killed before its rename
    extra = ["--resume", str(run)] if resume else ["--set", f"output.dir={run}"]
    result = run_main("run", str(CONFIG), *SMALL, *extra, "--quiet")
    assert result.returncode == 0, ("OUTCOME=unclear", result.stderr)
    assert _matrix(run) == _matrix(finished) and not list(run.glob("*.tmp"))


# -- full disks, file-size limits, read-only folders ------------------------------------------------
def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or not _mount("-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)):
        pytest.skip("cannot mount a tmpfs here (needs root); test_disk_full_in_process covers ENOSPC")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_one_line_and_resume_continues_exactly(tmp_path, tiny_tmpfs, finished):
    run = tiny_tmpfs / "run"
    result = run_main("run", str(CONFIG), *SMALL, "--set", f"output.dir={run}", "--quiet")
    _check(result, {}, {}, "space", "--resume")
    state = json.loads((run / "state" / "state.json").read_text())
    assert not state["finished"]
    assert _mount("-o", "remount,size=8m", str(tiny_tmpfs))
    result = run_main("run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert _matrix(run) == _matrix(finished)


def test_disk_full_in_process_keeps_the_last_commit(tmp_path, monkeypatch, finished):
    """ENOSPC from the operating system, simulated at the third snapshot write (no mount needed)."""
    from rankwise import io

    calls = [0]
    real = io.save_tensors

    def full(path, *a, **k):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(io, "save_tensors", full)
        result = run_main("run", str(CONFIG), *SMALL, "--set", f"output.dir={run}", "--quiet")
    _check(result, {}, {}, "space", str(run))
    committed = tree_digest(run / "state")
    assert not json.loads((run / "state" / "state.json").read_text())["finished"] and committed
    result = run_main("run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert _matrix(run) == _matrix(finished)


def test_file_size_limit_is_one_line_and_resume_continues_exactly(tmp_path, finished):
    run = tmp_path / "run"

    def limit():  # ulimit -f 40 kB: task 2's checkpoint (about 62 kB) cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    cmd = [sys.executable, "-m", "rankwise.cli", "run", str(CONFIG), *SMALL, "--set", f"output.dir={run}",
           "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, preexec_fn=limit, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=120)  # fmt: skip
    result = CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    assert proc.returncode != -signal.SIGXFSZ, "OUTCOME=traceback: killed by SIGXFSZ"
    _check(result, {}, {}, "file-size limit", "--resume")
    assert not json.loads((run / "state" / "state.json").read_text())["finished"]
    result = run_cli("run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert _matrix(run) == _matrix(finished)


def test_read_only_output_is_one_line_naming_where_to_write(tmp_path):
    src, ro = tmp_path / "src", tmp_path / "ro"
    _user_folder(src)
    ro.mkdir()
    if os.geteuid() != 0 or not _mount("--bind", "-o", "ro", str(src), str(ro)):
        pytest.skip("cannot bind-mount read-only here; test_read_only_in_process covers EROFS")
    try:
        before = _digest(tmp_path, ro)
        result = run_main("run", str(CONFIG), *SMALL, "--set", f"output.dir={ro / 'run'}", "--quiet")
        _check(result, before, _digest(tmp_path, ro), "read-only", "output.dir")
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_read_only_in_process(tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", a[0] if a else None)

    run = tmp_path / "run"
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    result = run_main("run", str(CONFIG), *SMALL, "--set", f"output.dir={run}", "--quiet")
    _check(result, {}, {}, "read-only", "output.dir")


# -- corrupt run files given to --resume, eval and report --------------------------------------------
CORRUPT = {
    "config_garbage": ("config.yaml", b"method: [unclosed\n"),
    "config_python_tag": ("config.yaml", b"name: !!python/object/apply:os.getcwd []\n"),
    "config_not_utf8": ("config.yaml", b"name: \xff\xfe\n"),
    "config_a_list": ("config.yaml", b"- a\n- b\n"),
    "state_garbage": ("state/state.json", b'{"version": 1, "task'),
    "state_a_list": ("state/state.json", b"[1, 2]\n"),
    "state_missing_keys": ("state/state.json", b'{"version": 1}\n'),
    "events_garbage": ("events.jsonl", b'not json\n{"event": "evaluation"}\n'),
}
# a command that never reads the file may succeed (exit 0); everything else is a one-line refusal
IGNORED = {("eval", "events.jsonl"), ("report", "state/state.json")}


@pytest.mark.parametrize("command", ["resume", "eval", "report"])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_run_file_is_one_line_naming_it(tmp_path, finished, unfinished, command, case):
    rel, content = CORRUPT[case]
    run = tmp_path / "run"
    shutil.copytree(unfinished if command == "resume" else finished, run)
    (run / rel).write_bytes(content)
    out = tmp_path / "report_out"
    argv = {
        "resume": ["run", str(CONFIG), *SMALL, "--resume", str(run), "--quiet"],
        "eval": ["eval", str(run), "--quiet"],
        "report": ["report", str(run), "--out", str(out)],
    }[command]
    before = _digest(tmp_path, out)
    result = run_main(*argv)
    if (command, rel) in IGNORED:
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        return
    _check(result, before, _digest(tmp_path, out), Path(rel).name)


@pytest.mark.parametrize("kind", ["file", "under_file"])
def test_report_out_that_is_not_a_folder_is_refused(tmp_path, finished, kind):
    victim = _user_folder(tmp_path / "victim")
    out = victim / "notes.txt" if kind == "file" else victim / "notes.txt" / "report"
    before = _digest(tmp_path)
    result = run_main("report", str(finished), "--out", str(out))
    _check(result, before, _digest(tmp_path), "--out")
