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

Plugins are loaded once per process, lazily: the first time a registry table is read. Only the
module an entry point names is imported then (keep it light; the Entry's strings point at the heavy
code, imported when a run uses it). A plugin that fails to import, is not an `Entry`, uses another
name than its entry point, or takes a built-in name is skipped with a one-line warning on stderr
naming it and its package; the CLI keeps working.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import Any

GROUPS = {"scenarios": "rankwise.scenarios", "backbones": "rankwise.backbones", "methods": "rankwise.methods"}

_loaded = False
_loading = False
_methods_loaded = False
_methods_loading = False


def warn(message: str) -> None:
    """One line on stderr (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"rankwise: warning: {message}", file=sys.stderr)


def _describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    package = f", package {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin {ep.name!r} ({ep.group} = {ep.value!r}{package})"


def _load(ep: metadata.EntryPoint) -> tuple[bool, Any]:
    """(True, the object `ep` names), or (False, None) after a one-line warning that it failed to load."""
    try:
        return True, ep.load()
    except Exception as exc:  # noqa: BLE001 - any broken plugin must not break the CLI
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warn(f"{_describe(ep)} failed to load ({type(exc).__name__}: {text[:200]}); skipped")
        return False, None


def _check(ep: metadata.EntryPoint, obj: Any, table: dict[str, Any]) -> str | None:
    """Why `obj` cannot be registered under `ep.name`, or None."""
    from rankwise.registry import Entry

    if not isinstance(obj, Entry):
        return f"expected a rankwise.registry.Entry, found {type(obj).__name__}"
    if obj.name != ep.name:
        return f"its Entry is named {obj.name!r}; the entry point and the Entry must share one name"
    if dict.__contains__(table, ep.name):
        return f"the name {ep.name!r} is already taken (built in, or by another plugin)"
    for ref in (obj.config, obj.factory):
        if not isinstance(ref, str) or ref.count(":") != 1:
            return f"Entry reference {ref!r} is not 'module:attribute'"
    return None


def load_group(group: str, table: dict[str, Any]) -> list[str]:
    """Add every valid entry point of `group` to `table` (a plain dict update); return the names added."""
    added = []
    for ep in metadata.entry_points(group=group):
        loaded, obj = _load(ep)
        if not loaded:
            continue
        problem = _check(ep, obj, table)
        if problem is not None:
            warn(f"{_describe(ep)}: {problem}; skipped")
            continue
        dict.__setitem__(table, ep.name, obj)
        added.append(ep.name)
    return added


def load_plugins() -> None:
    """Load the scenario and backbone plugins into the registry tables, once per process."""
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True  # a plugin module that reads a table while being imported must not recurse
    try:
        from rankwise import registry

        load_group(GROUPS["scenarios"], registry.SCENARIOS)
        load_group(GROUPS["backbones"], registry.BACKBONES)
        _loaded = True
    finally:
        _loading = False


def reset() -> None:
    """Forget loaded plugins (tests): the next table read finds the installed entry points again."""
    global _loaded
    from rankwise import registry

    for table, names in ((registry.SCENARIOS, registry.BUILTIN_SCENARIOS), (registry.BACKBONES, registry.BUILTIN_BACKBONES)):
        for name in [n for n in dict.keys(table) if n not in names]:
            dict.__delitem__(table, name)
    _loaded = False


def load_method_plugins() -> None:
    """Register the adapter methods of installed plugins in the method table, once per process.

    An entry point of group ``rankwise.methods`` names a `rankwise.adapters.Method` of the same name;
    it is registered with `register_method` (the same checks as a built-in line). Called lazily the
    first time the table is read (`rankwise.adapters.methods.get_method` / `method_names`).
    """
    global _methods_loaded, _methods_loading
    if _methods_loaded or _methods_loading:
        return
    _methods_loading = True
    try:
        from rankwise.adapters.methods import Method, register_method
        from rankwise.errors import ConfigError

        for ep in metadata.entry_points(group=GROUPS["methods"]):
            loaded, obj = _load(ep)
            if not loaded:
                continue
            if not isinstance(obj, Method):
                warn(f"{_describe(ep)}: expected a rankwise.adapters.Method, found {type(obj).__name__}; skipped")
                continue
            if obj.name != ep.name:
                warn(f"{_describe(ep)}: its Method is named {obj.name!r}; the entry point and the Method "
                     "must share one name; skipped")  # fmt: skip
                continue
            try:
                register_method(obj.name, obj.config, obj.layer)
            except ConfigError as exc:
                warn(f"{_describe(ep)}: {exc}; skipped")
        _methods_loaded = True
    finally:
        _methods_loading = False


def reset_methods() -> None:
    """Forget loaded method plugins (tests): drop every non-built-in entry of the method table."""
    global _methods_loaded
    from rankwise.adapters import methods

    for name in [n for n in methods._TABLE if n not in methods.BUILTIN_METHODS]:
        del methods._TABLE[name]
    _methods_loaded = False
