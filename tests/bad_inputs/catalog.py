"""Shared helpers of the bad-input catalog: run the CLI or an API call, check the refusal, hash the surroundings.

Every catalog case asserts three things: the exit code (2 for a refused input), that the error is one
line naming the field or file, and that every file that existed around the case is byte-identical
afterwards (`tree_digest` before == after).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree_digest(root: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (symlinks not followed), keyed by relative path."""
    root = Path(root)
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(*args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 120.0,
            env: dict[str, str] | None = None, stdin: bytes | None = None) -> CliResult:
    """``python -m rankwise.cli ARGS`` in a subprocess with one thread; a hang fails the test (timeout)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "rankwise.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, timeout=timeout, input=stdin,
    )
    return CliResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def assert_one_line_error(result: CliResult, *needles: str, code: int = 2) -> str:
    """The CLI refused with ``code``, printed no traceback, and one error line naming every needle."""
    assert result.returncode == code, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.error_lines
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_main(*args: str, cwd: str | os.PathLike[str] | None = None) -> CliResult:
    """``rankwise.cli.main(ARGS)`` in this process (no interpreter start-up: fast catalog cases).

    An exception that escapes ``main`` is returned as a traceback on stderr with exit code 1, the way
    the command line would show it, so a case can tell a clean refusal from a crash.
    """
    import contextlib
    import io as _io
    import traceback

    from rankwise import cli

    out, err = _io.StringIO(), _io.StringIO()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - the catalog records what escaped
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.chdir(old)
    return CliResult(code, out.getvalue(), err.getvalue())


def outcome(result: CliResult, before: dict[str, str], after: dict[str, str], code: int = 2,
            needles: tuple[str, ...] = ()) -> str:
    """The catalog category of a case: clean / data lost / traceback / accepted / unclear."""
    if any(after.get(k) != v for k, v in before.items()):  # a file changed or vanished (new ones are fine)
        return "data lost"
    if "Traceback" in result.stderr:
        return "traceback"
    if result.returncode == 0 and code != 0:
        return "accepted"
    lines = result.error_lines
    if result.returncode != code or len(lines) != 1 or not all(n in lines[0] for n in needles):
        return "unclear"
    return "clean"
