"""The run directory's rules: paths stay inside it, one process at a time, refuse to clobber, overwrite
only rankwise runs (by moving them aside), resume only the same config.

A run directory is recognised by its marker file ``.rankwise-run.json`` (written first, before
``config.yaml``), or, for runs made before the marker existed, by ``config.yaml`` together with a
``tasks.json`` that rankwise wrote. A folder holding nothing but our own leftovers (the marker, a
stale lock, temp files of a write killed before its rename) counts as empty.

Names that become paths: the run name must be one folder name (``check_run_name``); task names are
mapped to safe folder names (``path_component``); every path written or removed is checked to resolve
inside the run directory (``inside``).
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rankwise import io
from rankwise.config import RunConfig, config_from_dict, read_yaml
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import runlock
from rankwise.engine.results import RunResult, ensure_metrics, load_result, write_metrics  # noqa: F401  (API)
from rankwise.errors import CheckpointError, ConfigError, RankwiseError

MARKER = ".rankwise-run.json"
# top-level files of ours, and the temp names io.atomic_open gives them while they are being written
OUR_FILES = ("config.yaml", "tasks.json", "accuracy_matrix.json", "accuracy_matrix.csv", "events.jsonl",
             "metrics.json", MARKER)  # fmt: skip
_OUR_TEMP = re.compile(r"\.(" + "|".join(re.escape(n) for n in OUR_FILES) + r")\.[a-z0-9_]{8}\.tmp")
# room the deepest file of a run takes below the run directory:
# checkpoints/.task_<i>_<name>.tmp/.adapter_model.safetensors.XXXXXXXX.tmp with a name of <= 255 bytes
DEPTH_RESERVE = 320


# -- names and paths ------------------------------------------------------------------------------------
def _limit(path: Path, name: str, default: int) -> int:
    """The file system's NAME_MAX / PATH_MAX where `path` (or its nearest existing folder) lives."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, name))
    except (OSError, ValueError):
        return default


def _short(value: str, n: int = 60) -> str:
    return value if len(value) <= n else f"{value[:n]}... ({len(value)} characters)"


def check_run_name(name: Any, runs_dir: Path = Path("runs")) -> None:
    """``name`` becomes the folder ``runs/<name>``: one folder name, never a path."""
    limit = _limit(runs_dir, "PC_NAME_MAX", 255)
    bad = (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(c in name for c in "/\\\0")
        or len(os.fsencode(name)) > limit
    )
    if bad:
        raise ConfigError(
            "name",
            _short(name) if isinstance(name, str) else name,
            f"one folder name for runs/<name>: not empty, '.' or '..', without '/', '\\' or NUL, "
            f"at most {limit} bytes",
        )


def path_component(name: str, limit: int = 255) -> str:
    """`name` itself when it is a safe folder name of at most `limit` bytes, else a safe slug of it.

    Separators, NUL and control characters become ``_``; a name still too long is cut and given
    8 hex digits of its SHA-256, so two names never share a slug by truncation.
    """
    safe = re.sub(r"[/\\\x00-\x1f]", "_", name)
    if safe == name and len(os.fsencode(name)) <= limit and name not in ("", ".", ".."):
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    while len(os.fsencode(safe)) > limit - 9:
        safe = safe[:-1]
    return f"{safe}-{digest}"


def task_folder_name(index: int, task_name: str) -> str:
    """``task_<i>_<name>`` with room for the ``.tmp`` / ``.old`` siblings written beside it."""
    prefix = f"task_{index + 1}_"
    return prefix + path_component(task_name, 255 - len(prefix) - len("..tmp"))


def inside(run_dir: Path, path: Path) -> Path:
    """`path`, after proving it resolves (links and ``..`` followed) inside `run_dir`; else refuse."""
    root, real = Path(os.path.realpath(run_dir)), Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise RankwiseError(f"refusing to write {path}: it resolves to {real}, outside the run directory {root}")
    return path


def check_output_dir(run_dir: Path, field: str = "output.dir") -> None:
    """A path the run directory can live at: no NUL, names and length within the file system's limits,
    and neither it nor a folder above it is a file."""
    text = str(run_dir)
    if "\0" in text:
        raise ConfigError(field, _short(text), "a path without NUL characters")
    absolute = Path(os.path.abspath(text))
    name_max, path_max = _limit(absolute, "PC_NAME_MAX", 255), _limit(absolute, "PC_PATH_MAX", 4096)
    for part in absolute.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(
                field, _short(text), f"a path whose folder names are at most {name_max} bytes (one is {len(os.fsencode(part))})"
            )
    if len(os.fsencode(str(absolute))) + DEPTH_RESERVE > path_max:
        raise ConfigError(
            field,
            _short(text),
            f"a path of at most {path_max - DEPTH_RESERVE} bytes (PATH_MAX {path_max} less {DEPTH_RESERVE} for "
            f"the files inside); it has {len(os.fsencode(str(absolute)))}",
        )
    probe = absolute
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == absolute else f"lies under {probe}, a file"
        raise ConfigError(field, text, f"a directory path; this {what}")


# -- what a folder holds ----------------------------------------------------------------------------------
def _leftover(name: str) -> bool:
    return name in (MARKER, runlock.LOCK_NAME) or _OUR_TEMP.fullmatch(name) is not None


def _is_legacy_run(run_dir: Path) -> bool:
    """A run directory made before the marker existed: config.yaml + a tasks.json of ours."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "tasks.json").is_file():
        return False
    try:
        record = io.read_json(run_dir / "tasks.json")
    except CheckpointError:
        return False
    return isinstance(record, dict) and "version" in record and isinstance(record.get("tasks"), list)


def folder_kind(run_dir: Path) -> str:
    """'new' (absent), 'empty' (nothing, or only our leftovers), 'run' or 'foreign'."""
    if not run_dir.exists():
        return "new"
    names = [p.name for p in run_dir.iterdir()]
    if all(_leftover(n) for n in names):
        return "empty"
    return "run" if MARKER in names or _is_legacy_run(run_dir) else "foreign"


# -- opening a run directory ------------------------------------------------------------------------------
def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` resolved by this version: an option added after the run was made is compared at its
    default (which must be the behaviour of the code that made it); `saved` as is when it no longer parses."""
    try:
        return config_from_dict(saved).to_dict()
    except Exception:  # noqa: BLE001 - the raw config is then compared, and the diff shows what differs
        return saved


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> str:
    def lines(d: dict[str, Any]) -> list[str]:
        # where the run lives and how many threads it uses do not change what it computes; nor does
        # how many background processes make its batches, once there is at least one (engine/loader.py)
        d = {k: v for k, v in d.items() if k not in ("output", "threads")}
        if isinstance(d.get("eval"), dict):  # evaluation batches are the same batches either way
            d["eval"] = {k: v for k, v in d["eval"].items() if k != "data_workers"}
        if isinstance(d.get("train"), dict) and isinstance(d["train"].get("data_workers"), int):
            background = "in background processes" if d["train"]["data_workers"] else 0
            d["train"] = {**d["train"], "data_workers": background}
        return yaml.safe_dump(d, sort_keys=True).splitlines()

    return "\n".join(
        difflib.unified_diff(
            lines(_with_defaults(saved)), lines(current), "saved config.yaml", "this config", lineterm=""
        )
    )


def prepare_run_dir(
    run_dir: Path, resolved: dict[str, Any], resume: bool, overwrite: bool, say: Callable[[str], None]
) -> dict[str, Any] | None:
    """Apply the refuse/overwrite/resume rules; return the saved state when resuming (lock released)."""
    state, lock = open_run_dir(run_dir, resolved, resume, overwrite, say)
    lock.release()
    return state


def open_run_dir(
    run_dir: Path,
    resolved: dict[str, Any],
    resume: bool,
    overwrite: bool,
    say: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any] | None, runlock.RunLock]:
    """Check the path, take the run's lock, apply the refuse/overwrite/resume rules.

    Returns the saved state (when resuming) and the held lock; the caller releases it when the run ends.
    `warn` (default `say`) reports a stale lock taken over.
    """
    warn = warn or say
    field = "--resume" if resume else "output.dir"
    check_output_dir(run_dir, field)
    kind = folder_kind(run_dir)
    if resume and kind in ("new", "foreign"):
        raise CheckpointError(f"nothing to resume in {run_dir}: no config.yaml (start it without --resume)")
    if kind == "foreign":
        raise ConfigError(
            field,
            str(run_dir),
            "an empty or new directory: it holds files that are not a rankwise run (no "
            f"{MARKER}); --overwrite only replaces rankwise run directories: choose another output.dir",
        )
    if overwrite and kind == "run":
        here, real = Path.cwd().resolve(), run_dir.resolve()
        if here == real or real in here.parents:
            raise ConfigError(
                field, str(run_dir), "a folder other than the working directory or one above it "
                "(--overwrite would move it aside from under you): run from elsewhere or choose another output.dir"
            )
    with io.storage_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    lock = runlock.acquire(run_dir, field, warn)
    try:
        state = _apply_rules(run_dir, resolved, resume, overwrite, say, field)
        if isinstance(state, Path):  # moved aside to `state`, lock file and all: lock the new folder
            lock.path = state / runlock.LOCK_NAME
            lock.release()
            lock, state = runlock.acquire(run_dir, field, warn), None
        if not (run_dir / MARKER).is_file():
            io.write_json(run_dir / MARKER, {"rankwise_run": 1, "created": datetime.datetime.now().isoformat()})
        return state, lock
    except BaseException:
        lock.release()
        raise


def _apply_rules(run_dir, resolved, resume, overwrite, say, field) -> Any:
    kind = folder_kind(run_dir)  # again, now that we hold the lock
    state = ckpt.read_state(run_dir / "state") if (run_dir / "state").is_dir() else None
    if resume:
        if not (run_dir / "config.yaml").is_file():
            say(f"{run_dir} stopped before its config was written; starting it from the beginning")
            _drop_leftovers(run_dir)
            return None
        diff = _config_diff(read_saved_config(run_dir), resolved)
        if diff:
            raise ConfigError(
                "config",
                str(run_dir / "config.yaml"),
                f"the same config as the run being resumed; differences:\n{diff}",
            )
        if state is None:
            say(f"{run_dir} stopped before its first commit; starting it from the beginning")
        return state
    if kind == "empty":
        _drop_leftovers(run_dir)
        return None
    if kind == "foreign":  # appeared while we took the lock
        raise ConfigError(field, str(run_dir), "an empty or new directory: it holds files that are not a rankwise run")
    if not overwrite:
        what = (
            "a finished run"
            if state and state.get("finished")
            else "an unfinished run (continue it with --resume)"
            if state
            else "a run stopped before its first commit (restart it with --resume)"
        )
        raise ConfigError(
            field,
            str(run_dir),
            f"an empty or new directory: it holds {what}; pass --overwrite to replace it "
            "(the old one is moved aside, not deleted)",
        )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    backup, n = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}"), 1
    while backup.exists():
        n += 1
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    with io.storage_errors(run_dir):
        os.rename(run_dir, backup)  # a sibling: same file system, one atomic step
        run_dir.mkdir()
    say(f"overwrite: moved the previous contents of {run_dir} to {backup}")
    return backup


def _drop_leftovers(run_dir: Path) -> None:
    """Temp files of a write killed before its rename: ours, never referenced, safe to remove."""
    for path in run_dir.iterdir():
        if _OUR_TEMP.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()


# -- reading a run back ----------------------------------------------------------------------------------
def read_saved_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.yaml as a mapping; one-line errors name the file (bad YAML, python tags, bytes)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RankwiseError(f"{run_dir} is not a rankwise run directory (no config.yaml)")
    try:
        return read_yaml(path)
    except UnicodeDecodeError as exc:
        raise ConfigError("config", str(path), f"UTF-8 text (corrupted? {exc})") from exc


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The RunConfig a run directory was made with; errors name config.yaml."""
    data = read_saved_config(run_dir)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        path = Path(run_dir) / "config.yaml"
        raise ConfigError(exc.field, exc.value, f"{exc.expected} (in {path})") from exc


def tasks_record(tasks: list[Any]) -> dict[str, Any]:
    """What ``tasks.json`` records about each task: sizes, label space and the scenario's provenance.

    ``info`` is the scenario's ``task.info`` (split convention, shots, split seed, source folder, ...),
    so a run directory says which data it was trained and scored on.
    """
    return {
        "version": 1,
        "tasks": [
            {
                "index": i + 1,
                "name": t.name,
                "metric": t.metric,
                "num_train": len(t.train),
                "num_test": len(t.test),
                "num_classes": None if t.class_names is None else len(t.class_names),
                "num_eval_classes": None if t.eval_class_names is None else len(t.eval_class_names),
                "label_offset": t.label_offset,
                "num_templates": None if t.templates is None else len(t.templates),
                "info": _jsonable(t.info),
            }
            for i, t in enumerate(tasks)
        ],
    }


def _jsonable(obj: Any) -> Any:
    """Plain JSON data: paths and other objects become strings, tuples lists, numpy scalars numbers."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
