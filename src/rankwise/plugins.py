"""Scenarios, backbones and adapter methods from other packages, found through Python entry points.

A package extends rankwise, with no fork, by declaring in its ``pyproject.toml``::

    [project.entry-points."rankwise.scenarios"]
    tiny-words = "my_package:TINY_WORDS"        # a rankwise.registry.Entry named "tiny-words"

    [project.entry-points."rankwise.backbones"]
    bag-of-words = "my_package:BAG_OF_WORDS"

    [project.entry-points."rankwise.methods"]
    my-lora = "my_package.method:METHOD"        # a rankwise.adapters.Method("my-lora", Config, Layer)

where ``TINY_WORDS = Entry("tiny-words", "my_package.scenario:Config", "my_package.scenario:build", "...")``
follows the registry's contract (a config ``@dataclass`` and a factory; see `rankwise.registry`). Once
installed, the names work wherever built-in ones do: ``rankwise list``, run configs, torchrun workers
and ``--resume`` (each process finds the same installed entry points).

Plugins are loaded once per process, lazily: the first time a registry table is read.
This module is the mechanism only (it imports nothing of rankwise): `rankwise.registry` and
`rankwise.adapters.methods` call `load_group` with their own table, check and register functions. Only the
module an entry point names is imported then (keep it light; the Entry's strings point at the heavy
code, imported when a run uses it). A plugin that fails to import, is not an `Entry`, uses another
name than its entry point, or takes a built-in name is skipped with a one-line warning on stderr
naming it and its package; the CLI keeps working.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

GROUPS = {"scenarios": "rankwise.scenarios", "backbones": "rankwise.backbones", "methods": "rankwise.methods"}


def warn(message: str) -> None:
    """One line on stderr (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"rankwise: warning: {message}", file=sys.stderr)


def describe(ep: metadata.EntryPoint) -> str:
    """``plugin 'name' (group = 'module:attr', package P 1.0)``: how warnings name a plugin."""
    dist = getattr(ep, "dist", None)
    package = f", package {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin {ep.name!r} ({ep.group} = {ep.value!r}{package})"


def _load(ep: metadata.EntryPoint) -> tuple[bool, Any]:
    """(True, the object `ep` names), or (False, None) after a one-line warning that it failed to load."""
    try:
        return True, ep.load()
    except Exception as exc:  # noqa: BLE001 - any broken plugin must not break the CLI
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warn(f"{describe(ep)} failed to load ({type(exc).__name__}: {text[:200]}); skipped")
        return False, None


def load_group(
    group: str,
    check: Callable[[metadata.EntryPoint, Any], str | None],
    register: Callable[[str, Any], None],
) -> list[str]:
    """Register every valid entry point of `group`; return the names added.

    For each entry point the object it names is loaded; ``check(ep, obj)`` returns why it cannot be
    registered (or None), and ``register(ep.name, obj)`` adds it, raising `ValueError` (or a subclass,
    e.g. ConfigError) to refuse it. Every refusal is a one-line warning naming the plugin and its package.
    """
    added = []
    for ep in metadata.entry_points(group=group):
        loaded, obj = _load(ep)
        if not loaded:
            continue
        problem = check(ep, obj)
        if problem is None:
            try:
                register(ep.name, obj)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            warn(f"{describe(ep)}: {problem}; skipped")
            continue
        added.append(ep.name)
    return added


class Once:
    """Run a loader once per process; a loader that reads its own table while loading does not recurse."""

    def __init__(self, loader: Callable[[], None]) -> None:
        self._loader = loader
        self.done = False
        self._running = False

    def __call__(self) -> None:
        if self.done or self._running:
            return
        self._running = True
        try:
            self._loader()
            self.done = True
        finally:
            self._running = False
