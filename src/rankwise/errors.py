"""Exceptions with messages that name the offending field, the value and what would be valid."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable

#: longest value repr an error message carries (a value beyond it is shortened with "...")
MAX_VALUE_REPR = 200

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 6
_REPR.maxdict = 6
_REPR.maxstring = 120
_REPR.maxlong = 60
_REPR.maxother = 120


def short_repr(value: object, limit: int = MAX_VALUE_REPR) -> str:
    """``repr(value)`` cut to at most `limit` characters, without building the full repr first.

    Nested containers are shown to depth 3 and 6 items per level (``reprlib``), so a YAML alias bomb
    (a list that expands to millions of strings while holding only a few objects) costs microseconds
    here instead of exhausting memory; the result is then cut to `limit` characters.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the error being reported
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RankwiseError(Exception):
    """Base class for every error rankwise raises on purpose."""


class ConfigError(RankwiseError, ValueError):
    """A configuration value is missing, of the wrong type, or impossible."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}={short_repr(value)} is invalid: expected {short_repr_text(expected)}")


class TargetModulesError(RankwiseError, ValueError):
    """`target_modules` matched no layer of the model."""


class LifecycleError(RankwiseError, RuntimeError):
    """A lifecycle call came out of order (e.g. `end_task` without `begin_task`)."""


class CheckpointError(RankwiseError, RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not fit the model."""


class DataError(RankwiseError, ValueError):
    """Input data is missing, malformed or inconsistent with its label list."""


class StorageError(RankwiseError, OSError):
    """A file could not be written: disk full, file-size limit, read-only or forbidden location."""


def short_repr_text(text: str, limit: int = 4 * MAX_VALUE_REPR) -> str:
    """`text` cut to `limit` characters (an "expected ..." that quotes a value can be long too)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def choices(values: Iterable[object]) -> str:
    """Format a list of valid values for an error message."""
    return "one of " + ", ".join(repr(v) for v in values)
