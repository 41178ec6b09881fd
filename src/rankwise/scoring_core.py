"""What every scorer shares: the predictions-vs-targets check and the longest common subsequence.

`rankwise.scoring` (generic metrics) and `rankwise.trace_scoring` (TRACE's official rules) both build
on these, so neither imports the other for them (`scoring` registers the TRACE scorers by name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankwise.errors import DataError


def check_scorable(predictions: Sequence[Any], targets: Sequence[Any]) -> None:
    """DataError unless there is one prediction per target and at least one target."""
    if len(predictions) != len(targets):
        raise DataError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise DataError("cannot score an empty evaluation set")


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (bit-parallel, Hyyro 2004).

    Bit ``i`` of ``v`` is 1 while row position ``i`` of ``a`` is still unmatched; each character of ``b``
    updates ``v = (v + u) | (v - u)`` with ``u = v & match_mask[c]``; LCS = number of zero bits.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for ch in b:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")
