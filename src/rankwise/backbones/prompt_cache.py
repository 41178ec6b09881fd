"""One cache of class-prompt features, shared by the CLIP and sentence-encoder backbones.

Evaluation encodes the same class prompts for every batch, so a backbone keeps them. They are valid
only while nothing the text tower computes with has changed. The cache therefore keys the features
on a *state signature* of the module that encodes them:

    signature = for each submodule m (``named_modules`` order, minus excluded prefixes):
        (name, class, scalar attributes of m,
         for each parameter, buffer and plain tensor attribute t of m:
             (name, shape, dtype, device, SHA-1 of t's bytes))

    hit  <=>  signature == stored signature

The signature is a function of what the computation reads, nothing else: equal signatures mean the
same text features (the same code on the same numbers), whatever happened in between. So it sees

* an optimizer step, ``load_state_dict``, a merge ``W += B A``, CoDyRA's prox step, and writes
  through ``tensor.data`` or from code outside rankwise: the bytes change;
* MoRAM's ``end_task`` (live factors removed, the bank buffers replaced), ``begin_task``, loading and
  injection: names, shapes and modules change;
* inference options (MoRAM ``budget`` / ``tau`` / ``delta_threshold``) and train/eval mode: scalar
  attributes (bool, int, float, str, None and tuples or lists of them) of every module;
* autocast on or off, and its dtype: part of the request, since the features are computed under it.

It relies on no private torch state (an earlier key used ``Tensor._version``, which misses writes
through ``.data`` and needs identity checks against reused ids). What it does not see: a change of
forward hooks, and state kept outside the module tree.

State that records statistics and never changes an output (MoRAM's atom hit counts, updated in
place by every tracked evaluation forward) is left out when a module class lists those names in a
``statistics_state`` class attribute (duck-typed, so adapters and backbones never import each other);
otherwise every tracked batch would miss the cache.

Cost: hashing reads every byte of the text tower once (SHA-1 in hashlib, about 1.3 GB/s on this
project's CPU: 65 ms for MiniLM's 88 MB, 0.35-0.6 s for ViT-B/16's 63M-parameter text tower on a busy
core; device tensors are copied to the host first). The engine pays it once per row of the accuracy
matrix, not per batch: it evaluates a row inside ``cache.pinned()`` (through the backbone's
``evaluation()``), where the signature is taken at the first lookup and reused, because nothing
trains inside an evaluation pass. Outside such a block every lookup hashes afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_SCALARS = frozenset({bool, int, float, str, type(None)})


#: integer views of the same width, so any dtype's bytes reach numpy (which has no bfloat16)
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-1 of the tensor's values, as bytes in row-major order (any dtype, device or layout)."""
    x = t.detach()
    if x.is_complex():
        x = torch.view_as_real(x)
    x = x.contiguous().reshape(-1)
    if x.element_size() in _INT_VIEW and x.dtype != torch.bool:
        x = x.view(_INT_VIEW[x.element_size()])
    return hashlib.sha1(x.cpu().numpy().tobytes(), usedforsecurity=False).hexdigest()


def _tensor_entry(name: str, t: torch.Tensor) -> tuple[Any, ...]:
    return (name, tuple(t.shape), t.dtype, t.device, tensor_digest(t))


def module_state(module: nn.Module, exclude: Sequence[str] = ()) -> tuple[Any, ...]:
    """The state signature of `module` minus submodules whose name starts with an `exclude` prefix.

    Scalar attributes are those of exact type bool, int, float, str or None, or a tuple / list of
    them; other attributes (submodules, hooks, callables) are not part of the signature.
    """
    signature: list[Any] = []
    prefixes = tuple(exclude)
    for name, m in module.named_modules():
        if prefixes and name.startswith(prefixes):
            continue
        skip = getattr(type(m), "statistics_state", ())
        entry: list[Any] = [name, type(m)]
        for group in (m.named_parameters(recurse=False), m.named_buffers(recurse=False)):
            for key, t in group:
                if key not in skip:
                    entry.append(_tensor_entry(key, t))
        for key, value in vars(m).items():
            kind = type(value)
            if kind in _SCALARS:
                if key not in skip:
                    entry += (key, value)
            elif kind is tuple or kind is list:
                if all(type(v) in _SCALARS for v in value) and key not in skip:
                    entry += (key, tuple(value))
            elif isinstance(value, torch.Tensor) and key not in skip:  # a plain (unregistered) tensor
                entry.append(_tensor_entry(key, value))
        signature.append(tuple(entry))
    return tuple(signature)


class PromptFeatureCache:
    """Prompt features per request, valid while the encoding module's state signature is unchanged.

    ``get(module, request, compute)`` returns ``compute()``, stored under ``request`` (class names,
    templates, mode, ...). Any state change drops every stored request. ``enabled = False`` computes
    afresh on every call (the reference the cache is tested against). Inside ``with cache.pinned():``
    the module is taken as unchanged after the first lookup (one evaluation pass).
    """

    def __init__(self, enabled: bool = True, exclude: Sequence[str] = ()) -> None:
        self.enabled = enabled
        self.exclude = tuple(exclude)
        self._signature: tuple[Any, ...] | None = None
        self._features: dict[Hashable, torch.Tensor] = {}
        self._pins = 0
        self._pinned: tuple[int, tuple[Any, ...]] | None = None  # (id of the module, its signature)

    def clear(self) -> None:
        self._signature, self._features = None, {}

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """A block in which the encoding module does not change (an evaluation pass): its signature
        is taken once, at the first lookup. Nested blocks share the outermost one's."""
        self._pins += 1
        try:
            yield
        finally:
            self._pins -= 1
            if self._pins == 0:
                self._pinned = None

    def _state(self, module: nn.Module) -> tuple[Any, ...]:
        if self._pins and self._pinned is not None and self._pinned[0] == id(module):
            return self._pinned[1]  # the module is alive (the caller holds it), so its id is its own
        signature = module_state(module, self.exclude)
        if self._pins:
            self._pinned = (id(module), signature)
        return signature

    def get(self, module: nn.Module, request: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.enabled:
            return compute()
        device_type = next((p.device.type for p in module.parameters()), "cpu")
        request = (
            request,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        signature = self._state(module)
        if signature != self._signature:
            self.clear()
            self._signature = signature
        features = self._features.get(request)
        if features is None:
            # keyed on the state before computing: if computing changed state that matters (not
            # listed in `statistics_state`), the next lookup misses, which is slow but never stale
            features = compute()
            self._features[request] = features
        return features
