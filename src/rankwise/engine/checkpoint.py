"""Atomic, verified, pickle-free checkpoints and the resumable run state.

Layout inside a run directory::

    checkpoints/task_<i>_<name>/   model after task i (adapter files or model.safetensors) + checksums.json
    state/state.json               the commit record: where the run is and the accuracy rows so far
    state/snap_<n>/                tensors.safetensors + meta.json + checksums.json of one snapshot

A snapshot holds the trainable tensors of the current task, the optimizer and scheduler states and
every RNG state; at a task boundary with ``method.keep_optimizer`` it holds the finished task's
optimizer state (``kept_optimizer``), which the next task's optimizer continues from. Structures go to JSON and tensors to safetensors through `flatten` / `unflatten`
(no pickle). A directory is written under a temporary name, checksummed, then renamed, and only then
does `state.json` point at it (atomic replace), so a kill at any moment leaves the previous
consistent state. Every load verifies SHA-256 checksums first: a truncated or corrupted file raises
`CheckpointError` and is never loaded.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rankwise import io
from rankwise.errors import CheckpointError

CHECKSUMS = "checksums.json"


# -- structure <-> (JSON, tensors) --------------------------------------------------------------
def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `obj` with tensors moved into `tensors` under keys starting with `prefix`."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}#{len(tensors)}"
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, prefix, tensors) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, prefix, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint without pickle")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise CheckpointError(f"checkpoint lacks tensor {obj['__tensor__']!r}")
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
        raise CheckpointError(f"unknown structure in checkpoint: keys {sorted(obj)}")
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


# -- checksummed directories ----------------------------------------------------------------------
sha256 = io.sha256_file  # one reader for the engine's and the adapter folder's checksums


def write_checksums(directory: Path) -> None:
    sums = {
        str(p.relative_to(directory)): sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    }
    io.write_json(directory / CHECKSUMS, sums)


def verify_dir(directory: str | os.PathLike[str]) -> None:
    """Raise CheckpointError unless every file listed in checksums.json is present and intact."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    sums = io.read_json(directory / CHECKSUMS)
    for rel, expected in sums.items():
        path = directory / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        if sha256(path) != expected:
            raise CheckpointError(
                f"checkpoint file {path} is corrupted or truncated (SHA-256 differs from {CHECKSUMS}); "
                "it was not loaded"
            )


def check_shapes(needed: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], path: Path) -> None:
    """CheckpointError naming the first tensor of `saved` whose shape differs from the model's, with both
    shapes (e.g. the backbone section of a run's config.yaml was edited after the run saved it)."""
    differ = [k for k in needed if k in saved and tuple(saved[k].shape) != tuple(needed[k].shape)]
    if differ:
        key = differ[0]
        more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
        raise CheckpointError(
            f"{path}: tensor {key} has shape {tuple(saved[key].shape)} but the model built from the config "
            f"needs {tuple(needed[key].shape)}{more}; was the config's backbone changed after this was saved?"
        )


def write_dir_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_dir), checksum it, then rename it to `directory` (replacing an older copy).

    Disk full / file-size limit / read-only raise StorageError naming `directory`; the older copy stays.
    """
    with io.storage_errors(directory):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.parent / f".{directory.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)  # a leftover of a killed write: never referenced by any state
        tmp.mkdir()
        write(tmp)
        write_checksums(tmp)
        if directory.exists():
            old = directory.parent / f".{directory.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
        io._fsync_dir(directory.parent)


# -- snapshots ------------------------------------------------------------------------------------
def save_snapshot(directory: Path, meta: dict[str, Any], structured: dict[str, Any]) -> None:
    """Write a snapshot dir: `structured` may contain tensors anywhere; `meta` is plain JSON."""

    def write(tmp: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        flat = {key: flatten(value, key, tensors) for key, value in structured.items()}
        io.save_tensors(tmp / "tensors.safetensors", tensors)
        io.write_json(tmp / "meta.json", {"meta": meta, "structure": flat})

    write_dir_atomically(directory, write)


def load_snapshot(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, structured) of a verified snapshot."""
    verify_dir(directory)
    tensors = io.load_tensors(directory / "tensors.safetensors")
    data = io.read_json(directory / "meta.json")
    return data["meta"], {key: unflatten(value, tensors) for key, value in data["structure"].items()}


# -- the commit record ------------------------------------------------------------------------------
STATE_VERSION = 1


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    io.write_json(state_dir / "state.json", {"version": STATE_VERSION, **state})


# what state.json must hold, by key: the type and what it means
STATE_FIELDS = {
    "task_index": int,
    "iteration": int,
    "snapshot": str,
    "rows": list,
    "snapshot_seq": int,
    "finished": bool,
    "num_events": int,
}


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The commit record, checked: CheckpointError names the file and the bad field (never a KeyError later)."""
    path = state_dir / "state.json"
    if not path.exists():
        return None
    state = io.read_json(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(state).__name__} (corrupted?)")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"{path} has version {state.get('version')!r}; this rankwise reads {STATE_VERSION}"
        )
    for key, kind in STATE_FIELDS.items():
        value = state.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(
                f"{path}: field {key!r} is {str(value)[:40]!r}, expected a {kind.__name__} (corrupted?)"
            )
    if not re.fullmatch(r"snap_\d+", state["snapshot"]):
        raise CheckpointError(f"{path}: field 'snapshot' is {state['snapshot'][:40]!r}, expected snap_<number>")
    return state


def prune_snapshots(state_dir: Path, keep: str | None) -> None:
    """Remove snapshot dirs other than `keep` (internal resume data only, never user files)."""
    for path in state_dir.glob("snap_*"):
        if path.name != keep and path.is_dir() and not path.is_symlink():  # never follow a link out
            shutil.rmtree(path)
