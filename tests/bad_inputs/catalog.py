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
