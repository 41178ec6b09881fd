"""Atomic file writes (temp file + fsync + rename) and checked safetensors/JSON reads.

Every file rankwise writes goes through this module, so a crash at any moment leaves either the
old file or the new one, never a half-written file that a later run would read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from rankwise.errors import CheckpointError, DataError, RankwiseError, StorageError

# what the user can do about a failed write, by errno
STORAGE_ADVICE = {
    errno.ENOSPC: "no space left on the device: free space there (or choose another output.dir)",
    errno.EDQUOT: "disk quota exceeded: free space there (or choose another output.dir)",
    errno.EFBIG: "the file-size limit was reached (ulimit -f): raise it (or choose another output.dir)",
    errno.EROFS: "read-only file system: choose a writable output.dir",
    errno.EACCES: "permission denied: choose a writable output.dir",
    errno.EPERM: "operation not permitted: choose a writable output.dir",
    errno.ENAMETOOLONG: "file name too long for the file system: choose a shorter output.dir or name",
}


def storage_error(exc: OSError, path: str | os.PathLike[str]) -> StorageError | None:
    """A one-line StorageError naming `path` and what to free or where to write; None if not a storage fault."""
    advice = STORAGE_ADVICE.get(exc.errno) if exc.errno is not None else None
    return None if advice is None else StorageError(f"cannot write {os.fspath(path)}: {advice}")


@contextmanager
def storage_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a disk-full / file-size / read-only OSError raised inside into a StorageError naming `path`."""
    try:
        yield
    except RankwiseError:
        raise
    except OSError as exc:
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from exc


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A write that fails for lack of room or permission raises StorageError; the old file is untouched.
    """
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with storage_errors(path):
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read 1 MiB at a time (the checksums of adapter and checkpoint folders)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupted?): {exc}") from exc


def read_jsonl(path: str | os.PathLike[str], limit: int | None = None) -> list[Any]:
    """The first `limit` records (default: all) of a JSON-lines file; CheckpointError names a bad line."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not valid UTF-8 (corrupted?): {exc}") from exc
    records = []
    for number, line in enumerate(lines[:limit] if limit is not None else lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} line {number} is not valid JSON (corrupted?): {exc}") from exc
    return records


def read_json_list(path: str | os.PathLike[str], what: str = "list") -> list[Any]:
    """A data file that holds one JSON list; DataError names the file when it is not valid."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DataError(f"{path} should hold a JSON {what}, found {type(data).__name__}")
    return data


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous and moved to CPU."""
    from safetensors.torch import save

    payload = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_open(path, "wb") as handle:
        handle.write(payload)


def load_tensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a truncated or corrupted file raises CheckpointError, never garbage."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a valid safetensors file (truncated or corrupted?): {exc}"
        ) from exc
    return {k: v.to(device) for k, v in tensors.items()}
