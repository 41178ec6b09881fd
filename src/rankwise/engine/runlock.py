"""One process per run directory: a lock file held for the life of the run.

``RUN_DIR/.rankwise.lock`` records who holds it (pid, host, start time) and is held with ``flock``
while the run lives, so the kernel releases it the moment the process dies, even under SIGKILL:

* another live process holds the flock            -> refused, naming that pid and host;
* the file exists but nobody holds the flock      -> stale (its process is gone): taken over, with a
  message naming the old holder;
* the file names another host                      -> refused (its pid cannot be checked from here);
  the message says to delete the file if that run is gone.

The lock file is the one file not written through ``rankwise.io``'s temp-and-rename: the lock must
stay on the one inode every process opens. After taking the flock we check that the path still names
that inode (a finishing run unlinks it), and retry otherwise.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
from pathlib import Path

from rankwise import io
from rankwise.errors import ConfigError, RankwiseError

LOCK_NAME = ".rankwise.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "null")
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"


class RunLock:
    """The held lock of one run directory; `release()` (idempotent) unlinks and unlocks it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass  # moved aside with its folder, or already gone: nothing of ours left to remove
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


def acquire(run_dir: Path, field: str, say) -> RunLock:
    """Take `run_dir`'s lock or raise ConfigError naming the holder; `say` reports a taken-over stale lock."""
    path = run_dir / LOCK_NAME
    host = socket.gethostname()
    for _ in range(5):
        with io.storage_errors(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            lock = _take(path, fd, run_dir, field, host, say)
        except BaseException:
            os.close(fd)
            raise
        if lock is not None:
            return lock
        os.close(fd)  # the file was replaced under us: try the new one
    raise RankwiseError(f"could not lock {path}: it keeps being replaced by another process")


def _take(path: Path, fd: int, run_dir: Path, field: str, host: str, say) -> RunLock | None:
    import fcntl

    flock_works = True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _refuse(run_dir, field, path, _holder(fd))
    except OSError as exc:  # e.g. a network file system without locks: fall back to pid/host
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        flock_works = False
    try:
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            return None
    except FileNotFoundError:
        return None
    old = _holder(fd)
    if old:
        if old.get("host") != host:
            _refuse(run_dir, field, path, old, other_host=True)
        pid = old.get("pid")
        if not flock_works and isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            _refuse(run_dir, field, path, old)
        say(f"{path}: took over a stale lock of {_describe(old)}: that process is gone")
    record = {"pid": os.getpid(), "host": host, "started": datetime.datetime.now().isoformat(timespec="seconds")}
    with io.storage_errors(path):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
    return RunLock(path, fd)


def _refuse(run_dir: Path, field: str, path: Path, holder: dict | None, other_host: bool = False) -> None:
    hint = (
        f"if that run is gone, delete {path}"
        if other_host
        else "wait for it to finish, or choose another output.dir"
    )
    raise ConfigError(
        field, str(run_dir), f"a run directory no other process is using: it is in use by {_describe(holder)}, "
        f"lock file {path}; {hint}"
    )
