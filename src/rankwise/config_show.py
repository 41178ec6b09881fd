"""``rankwise config show PRESET_OR_FILE`` (or ``--method NAME``): every key of a run config with its type, value, default and help.

Read from the same dataclasses the config is built with (`RunConfig`, the method's adapter config, the
backbone's and scenario's config classes, `TrainConfig`, `EvalConfig`, `OutputConfig`), so the listing
cannot drift from what `config_from_dict` accepts.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from rankwise.adapters.methods import get_method, method_names
from rankwise.config import RUN_KINDS, EvalConfig, OutputConfig, RunConfig, TrainConfig
from rankwise.config_types import type_name
from rankwise.errors import choices

_NO_DEFAULT = "(required)"


@dataclass(frozen=True)
class Key:
    """One config key: dotted path, type, value in this config, default, help text."""

    path: str
    type: str
    value: Any
    default: Any
    help: str


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def _fields(section: str, cls: type, obj: Any) -> list[Key]:
    hints = typing.get_type_hints(cls)
    return [
        Key(f"{section}.{f.name}", type_name(hints[f.name]), getattr(obj, f.name), _default(f),
            f.metadata.get("help", ""))
        for f in dataclasses.fields(cls) if f.init
    ]  # fmt: skip


def describe(config: RunConfig) -> list[Key]:
    """Every key of `config`, section by section, in the order the dataclasses declare them."""
    keys: list[Key] = []
    hints = typing.get_type_hints(RunConfig)
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name in ("name", "seed", "device", "threads"):
        f = top[name]
        keys.append(
            Key(name, type_name(hints[name]), getattr(config, name), _default(f), f.metadata.get("help", ""))
        )
    for section in ("method", "backbone", "scenario"):
        component = getattr(config, section)
        names = choices(RUN_KINDS + method_names()) if section == "method" else "see `rankwise list`"
        keys.append(Key(f"{section}.name", "str", component.name, _NO_DEFAULT,
                        f"{top[section].metadata['help']}: {names}"))  # fmt: skip
        if component.config is not None:
            keys += _fields(section, type(component.config), component.config)
    for section, cls in (("train", TrainConfig), ("eval", EvalConfig), ("output", OutputConfig)):
        keys += _fields(section, cls, getattr(config, section))
    return keys


def describe_method(name: str) -> list[Key]:
    """The keys of one adapter method's section (``rankwise config show --method NAME``), at their
    defaults; an unknown name raises ConfigError listing the registered ones."""
    cls = get_method(name, "--method").config
    help_ = dataclasses.fields(RunConfig)[1].metadata["help"]  # RunConfig.method
    return [Key("method.name", "str", name, _NO_DEFAULT, help_), *_fields("method", cls, cls())]


def format_keys(keys: list[Key]) -> str:
    """One line per key: ``path  type  = value  (default ...)  help``; the default is shown only when
    the value differs from it."""
    width = max(len(k.path) for k in keys)
    type_width = min(max(len(k.type) for k in keys), 28)
    lines = []
    for k in keys:
        default = "" if k.value == k.default or k.default == _NO_DEFAULT else f"  (default {k.default!r})"
        lines.append(
            f"{k.path:<{width}}  {k.type:<{type_width}}  = {k.value!r}{default}  # {k.help}".rstrip(" #")
        )
    return "\n".join(lines)
