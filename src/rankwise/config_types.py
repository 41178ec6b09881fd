"""One typed pass from parsed YAML to config dataclasses: every field is coerced from its annotation.

YAML 1.1 (PyYAML) reads ``5e-3`` and ``1e-4`` as *strings* (a float needs a dot: ``5.0e-3``), and reads
``.nan`` / ``.inf`` as floats. Every section of a run config (``train``, ``eval``, ``output``, the
``method`` adapter config, the ``backbone`` and ``scenario`` dataclasses) goes through `coerce`, so the
same value means the same thing in every section:

* ``float``: an int, a float, or a string that parses as a number (``"5e-3"`` -> 0.005); NaN and
  infinities are refused, in every float field (a NaN threshold silently disables what it gates);
* ``int``: an int (not a bool, not ``2.0``); ``bool``: true/false only; ``str``: a string only;
* ``Literal[...]``: one of the listed values (same type); ``X | None``, ``Union``: the first alternative
  that fits; ``list[T]`` / ``tuple[...]`` / ``dict[K, V]``: item by item, errors name ``path[i]`` / ``path.key``.

`check_size` bounds how many values a parsed YAML document expands to (aliases counted each time they
are used), so that an alias bomb is refused before anything walks, copies or prints it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from rankwise.errors import ConfigError, choices

#: most values (mappings, lists and scalars, aliases counted at each use) one config may expand to
MAX_CONFIG_VALUES = 100_000


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return choices(typing.get_args(tp))
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _float(value: Any, path: str) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = math.inf
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None:
        raise ConfigError(path, value, "a number")
    if not math.isfinite(number):
        raise ConfigError(path, value, "a finite number (NaN and infinities are not allowed)")
    return number


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; convert where YAML is ambiguous (1e-4 is a string).

    Handles ``Any``, ``bool``/``int``/``float``/``str``, ``Literal[...]``, ``X | None`` /
    ``Optional`` / ``Union`` (first alternative that fits), ``list[T]``, ``tuple[T, ...]``,
    ``tuple[A, B]``, ``dict[K, V]`` (bare ``list`` / ``tuple`` / ``dict`` too) and plain classes.
    """
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, path)
            except ConfigError as exc:
                if exc.field != path:  # the value fits this alternative's shape; an item is wrong
                    raise
                if exc.expected.startswith("a finite number"):  # a number, just not a usable one
                    raise
                errors.append(exc.expected)
        raise ConfigError(path, value, " or ".join(errors + (["null"] if type(None) in args else [])))
    if origin is typing.Literal:
        for allowed in args:
            if type(value) is type(allowed) and value == allowed:
                return allowed
        raise ConfigError(path, value, choices(args))
    if tp in (list, tuple, dict, set):
        origin, args = tp, ()
    if origin in (list, set):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, f"a list ({type_name(tp)})")
        item = args[0] if args else Any
        return [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, f"a list ({type_name(tp)})")
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
        if args == ((),):  # tuple[()]
            args = ()
        if len(value) != len(args):
            raise ConfigError(path, value, f"a list of exactly {len(args)} items ({type_name(tp)})")
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or (origin is not None and isinstance(origin, type) and issubclass(origin, dict)):
        if not isinstance(value, dict):
            raise ConfigError(path, value, f"a mapping ({type_name(tp)})")
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            key = coerce(k, key_tp, f"{path} key {k!r}")
            out[key] = coerce(v, value_tp, f"{path}.{k}")
        return out
    if origin is not None:  # another generic (e.g. collections.abc.Sequence[int]): check the outer type
        if isinstance(origin, type) and isinstance(value, origin):
            return value
        raise ConfigError(path, value, type_name(tp))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(path, value, "null")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, value, "an integer")
    if tp is float:
        return _float(value, path)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, value, "a string")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(path, value, type_name(tp))
    raise ConfigError(path, value, f"a value of a type the config reader cannot check ({tp!r})")


def coerce_fields(cls: type, data: dict[str, Any], path: str) -> dict[str, Any]:
    """`data` with every key that is an init field of dataclass `cls` coerced from its annotation.

    Unknown keys are kept as they are (the caller reports them with the list of valid keys).
    """
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: coerce(v, hints[k], f"{path}.{k}") if k in valid else v for k, v in data.items()}


def plain(obj: Any) -> Any:
    """Tuples -> lists, recursively, so that the resolved config is YAML-safe."""
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def build_dataclass(cls: type, data: Any, path: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking keys and types; errors name `path.key`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            path, data, f"a mapping with keys {choices(f.name for f in dataclasses.fields(cls))}"
        )
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(f"{path}.{key}", value, f"a known key: {choices(valid)}")
    kwargs = coerce_fields(cls, data, path)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.field.startswith(f"{path}."):
            raise
        raise ConfigError(f"{path}.{exc.field}", exc.value, exc.expected) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(path, data, str(exc)) from exc


def check_size(data: Any, where: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a parsed document that expands to more than `limit` values (a YAML alias bomb).

    Counts every mapping, list and scalar as it would appear if written out in full (a list reached
    through five aliases counts five times); stops at the first value past the limit, so the cost is
    bounded by `limit` whatever the document's expanded size. The error names the top-level key (and
    its first key below) where the limit was crossed.
    """
    count = 0
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, path = stack.pop()
        count += 1
        if count > limit:
            field_ = ".".join(path.split(".")[:2]) if path else where
            raise ConfigError(
                field_ or where,
                f"<YAML expanding to more than {limit:,} values>",
                f"a config of at most {limit:,} values (aliases counted at each use) in {where}",
            )
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, path) for v in node)


def dotted_items(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"train.lr": 0.001, ...}``: the keys `apply_override` takes."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(dotted_items(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
