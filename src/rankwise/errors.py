"""Exceptions with messages that name the offending field, the value and what would be valid."""

from __future__ import annotations

from collections.abc import Iterable


class RankwiseError(Exception):
    """Base class for every error rankwise raises on purpose."""


class ConfigError(RankwiseError, ValueError):
    """A configuration value is missing, of the wrong type, or impossible."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}={value!r} is invalid: expected {expected}")


class TargetModulesError(RankwiseError, ValueError):
    """`target_modules` matched no layer of the model."""


class LifecycleError(RankwiseError, RuntimeError):
    """A lifecycle call came out of order (e.g. `end_task` without `begin_task`)."""


class CheckpointError(RankwiseError, RuntimeError):
    """A checkpoint is missing, truncated, corrupted or does not fit the model."""


class DataError(RankwiseError, ValueError):
    """Input data is missing, malformed or inconsistent with its label list."""


def choices(values: Iterable[object]) -> str:
    """Format a list of valid values for an error message."""
    return "one of " + ", ".join(repr(v) for v in values)
