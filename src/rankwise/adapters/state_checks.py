"""Checks of a saved layer state (adapter_config.json metadata and tensors) before anything is loaded:
each failure is an `AdapterStateError` naming the field or tensor and what was wrong."""

from __future__ import annotations

from typing import Any

import torch

from rankwise.errors import CheckpointError


class AdapterStateError(CheckpointError):
    """A layer's saved state cannot be loaded: ``kind`` is "field" (metadata) or "tensor", ``key`` its name."""

    def __init__(self, kind: str, key: str, problem: str) -> None:
        self.kind, self.key, self.problem = kind, key, problem
        super().__init__(f"{kind} {key}: {problem}")


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters: an error message never grows with the value it quotes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def meta_int(meta: dict[str, Any], key: str) -> int:
    """meta[key] as an integer >= 0, else AdapterStateError naming the field."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AdapterStateError("field", key, f"{short_repr(value)} is invalid: expected an integer >= 0")
    return value


def meta_bool(meta: dict[str, Any], key: str, default: Any = None) -> bool:
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise AdapterStateError("field", key, f"{short_repr(value)} is invalid: expected true or false")
    return value


def meta_int_list(meta: dict[str, Any], key: str) -> list[int]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise AdapterStateError("field", key, f"{short_repr(value)} is invalid: expected a list of integers >= 0")
    return value


def expect_tensor(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int | None, ...]) -> torch.Tensor:
    """tensors[key] if it is a floating-point tensor of `shape` (None: any size), else AdapterStateError."""
    if key not in tensors:
        raise AdapterStateError("tensor", key, "is missing")
    tensor = tensors[key]
    if not tensor.is_floating_point():
        raise AdapterStateError("tensor", key, f"has dtype {tensor.dtype}; expected a floating-point tensor")
    got = tuple(tensor.shape)
    need = tuple(g if n is None else n for n, g in zip(shape, got)) if len(got) == len(shape) else shape
    if got != need:
        shown = tuple("*" if n is None else n for n in need)
        raise AdapterStateError(
            "tensor", key, f"has shape {got} but this model needs {shown} (saved from a model of another shape?)"
        )
    return tensor
