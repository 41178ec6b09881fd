"""The one table of adapter methods: ``method.name`` -> (config dataclass, layer class).

Everything that needs to know which methods exist reads this table: `inject_adapters` (which layer
wraps a targeted nn.Linear), `adapter_config_from_dict` / `load_model` (which config a saved folder
names), the run config (``method.name`` and its typed fields), ``rankwise list`` and
``rankwise config show``. A method is one file, ``adapters/<method>.py`` with its config (a subclass
of `AdapterConfig` whose ``method`` class attribute is its name) and its layer (a subclass of
`AdapterLayer` carrying its lifecycle hooks), plus one `register_method` line at the end of this file,
naming both classes as ``"module:Class"`` (imported when the table is built; docs/CONTRACT.md, "Adding
a method"). Code outside rankwise can call `register_method` itself, with classes or such references;
the name then works in every process that has run that code first.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from rankwise import plugins
from rankwise.adapters.base import AdapterConfig, AdapterLayer
from rankwise.errors import ConfigError, choices

#: ``method.name`` values of the run kinds that have no adapter (the engine's); never a method name
RESERVED_NAMES = ("zero-shot", "full")
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class Method:
    """One adapter method: its name, its config dataclass and the layer that wraps an nn.Linear."""

    name: str
    config: type[AdapterConfig]
    layer: type[AdapterLayer]

    @property
    def summary(self) -> str:
        """The first line of the docstring of the method's file (``rankwise list`` shows it)."""
        doc = getattr(sys.modules.get(self.layer.__module__), "__doc__", None) or self.layer.__doc__ or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


_TABLE: dict[str, Method] = {}


def _load(ref: object, field: str) -> object:
    """A class given as itself or as ``"package.module:Class"`` (imported here)."""
    if not isinstance(ref, str):
        return ref
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(field, ref, "a class or a 'package.module:Class' reference")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(field, ref, f"an importable class ({type(exc).__name__}: {exc})") from exc


def register_method(
    name: str, config_cls: type[AdapterConfig] | str, layer_cls: type[AdapterLayer] | str
) -> Method:
    """Add method `name` to the table; registering the same classes again is a no-op.

    `config_cls` and `layer_cls` are classes or ``"package.module:Class"`` references, imported now.
    `config_cls.method` must equal `name` (a saved adapter folder names its method through it). A
    name taken by other classes, a reserved name (``zero-shot``, ``full``), a reference that does
    not import or a class of the wrong kind raises ConfigError naming the problem.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ConfigError(
            "method", name, "a lower-case name ([a-z][a-z0-9_-]*) other than " + choices(RESERVED_NAMES)
        )
    config_cls = _load(config_cls, f"{name}.config")
    layer_cls = _load(layer_cls, f"{name}.layer")
    if not (isinstance(config_cls, type) and issubclass(config_cls, AdapterConfig)):
        raise ConfigError(f"{name}.config", config_cls, "a subclass of rankwise.adapters.AdapterConfig")
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, AdapterLayer)):
        raise ConfigError(f"{name}.layer", layer_cls, "a subclass of rankwise.adapters.AdapterLayer")
    if config_cls.method != name:
        raise ConfigError(
            f"{config_cls.__name__}.method", config_cls.method, f"the registered name {name!r}"
        )
    entry = Method(name, config_cls, layer_cls)
    old = _TABLE.get(name)
    if old is not None and old != entry:
        raise ConfigError(
            "method", name, f"a name not taken already (it is {old.config.__name__} / {old.layer.__name__})"
        )
    _TABLE[name] = entry
    return entry


def _method_problem(ep: object, obj: object) -> str | None:
    """Why an entry point's object cannot be registered as a method, or None."""
    if not isinstance(obj, Method):
        return f"expected a rankwise.adapters.Method, found {type(obj).__name__}"
    if obj.name != getattr(ep, "name", None):
        return f"its Method is named {obj.name!r}; the entry point and the Method must share one name"
    return None


#: registers the methods of installed ``rankwise.methods`` entry points (each names a `Method` of the
#: same name) with `register_method`, the same checks as a built-in line; once per process, lazily
_load_plugins = plugins.Once(
    lambda: plugins.load_group(
        plugins.GROUPS["methods"], _method_problem, lambda name, m: register_method(name, m.config, m.layer)
    )
)


def _with_plugins() -> dict[str, Method]:
    """The table, after installed ``rankwise.methods`` entry points were registered (once per process)."""
    _load_plugins()
    return _TABLE


def reset_plugins() -> None:
    """Forget loaded method plugins (tests): drop every non-built-in entry of the method table."""
    for name in [n for n in _TABLE if n not in BUILTIN_METHODS]:
        del _TABLE[name]
    _load_plugins.done = False


def method_names() -> tuple[str, ...]:
    """Registered adapter method names, in registration order (built-ins first, then plugins)."""
    return tuple(_with_plugins())


def get_method(name: object, field: str = "method") -> Method:
    """The table entry of `name`; ConfigError on `field` listing the known names otherwise."""
    table = _with_plugins()
    if not isinstance(name, str) or name not in table:
        raise ConfigError(field, name, "one of " + ", ".join(repr(m) for m in table))
    return table[name]


def method_of(config: AdapterConfig) -> Method:
    """The table entry of an adapter config object (by its ``method`` name, checked against its class)."""
    entry = get_method(config.method)
    if not isinstance(config, entry.config):
        raise ConfigError("method", config.method, f"a {entry.config.__name__} (got {type(config).__name__})")
    return entry


class _View(Mapping):
    """A read-only, always current view of the table (the older dict names below)."""

    def __init__(self, key: str, value: str) -> None:
        self._key, self._value = key, value

    def _items(self) -> dict:
        return {getattr(m, self._key): getattr(m, self._value) for m in _TABLE.values()}

    def __getitem__(self, key: object) -> type:
        return self._items()[key]

    def __iter__(self) -> Iterator:
        return iter(self._items())

    def __len__(self) -> int:
        return len(_TABLE)

    def __repr__(self) -> str:
        return repr(self._items())


#: name -> config class (``rankwise.adapters.model.CONFIG_CLASSES``)
CONFIG_CLASSES: Mapping[str, type[AdapterConfig]] = _View("name", "config")
#: config class -> layer class (``rankwise.adapters.inject.LAYER_CLASSES``)
LAYER_CLASSES: Mapping[type[AdapterConfig], type[AdapterLayer]] = _View("config", "layer")

# -- the built-in methods: one line each ------------------------------------------------------------
register_method("lora", "rankwise.adapters.lora:LoRAConfig", "rankwise.adapters.lora:LoRALinear")
register_method("codyra", "rankwise.adapters.codyra:CoDyRAConfig", "rankwise.adapters.codyra:CoDyRALinear")
register_method("moram", "rankwise.adapters.moram:MoRAMConfig", "rankwise.adapters.moram:MoRAMLinear")
register_method("inflora", "rankwise.adapters.inflora:InfLoRAConfig", "rankwise.adapters.inflora:InfLoRALinear")
register_method("olora", "rankwise.adapters.olora:OLoRAConfig", "rankwise.adapters.olora:OLoRALinear")
register_method("moe-lora", "rankwise.adapters.moelora:MoELoRAConfig", "rankwise.adapters.moelora:MoELoRALinear")
BUILTIN_METHODS = frozenset(_TABLE)
