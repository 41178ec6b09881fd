"""One cache of class-prompt features, shared by the CLIP and sentence-encoder backbones.

Evaluation encodes the same class prompts for every batch, so a backbone keeps them. They are valid
only while nothing the text tower computes with has changed. The cache therefore keys the features
on a *state signature* of the module that encodes them, taken before every lookup:

    signature = for each submodule m (``named_modules`` order, minus excluded prefixes):
        (name, class, scalar attributes of m,
         for each parameter, buffer and plain tensor attribute t of m:
             (name, in-place version of t, data pointer, shape, dtype, device))
    identity  = the tensors themselves, held by weak reference

    hit  <=>  signature == stored signature  and  every stored tensor is the current one

What changes the signature, and why each piece is there:

* an optimizer step, ``load_state_dict``, a merge ``W += B A``: in-place writes bump the tensor's
  version counter;
* MoRAM's ``end_task`` (live factors removed, the bank buffers replaced): the names, shapes and
  identities of the tensors change, so the key never falls back to the zero-shot one;
* ``begin_task`` / loading / injection: new modules, tensors and scalar state (``task_active``);
* inference options (MoRAM ``budget`` / ``tau`` / ``delta_threshold``) and train/eval mode: scalar
  attributes (bool, int, float, str, None and tuples or lists of them) of every module;
* autocast on or off, and its dtype: part of the request, since the features are computed under it.

Identity is checked with weak references, never with ``id()``: an id can be reused by a new tensor
once the old one is garbage-collected, while a dead weak reference never matches a live tensor, and
holding weak (not strong) references keeps no replaced weights alive.

State that records statistics and never changes an output (MoRAM's atom hit counts, updated in
place by every tracked evaluation forward) is left out when a module class lists those names in a
``statistics_state`` class attribute (duck-typed, so adapters and backbones never import each
other); otherwise every tracked batch would miss the cache.

Not seen: a write through ``tensor.data`` (it has its own version counter; use ``torch.no_grad()``
and write to the tensor itself, as rankwise does outside CoDyRA's prox step, which always follows an
optimizer step), a change of forward hooks, and state kept outside the module tree.

Cost: one pass over the modules, their tensors and attributes per lookup (one lookup per evaluation
batch). Measured on this project's 2-core CPU for ViT-B/16 with MoRAM on all 144 linears: 3.2 ms
(text tower; 6.8 ms for the whole model), against 700 ms to preprocess the 64 images of one batch
and several seconds to encode them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import nn

_SCALARS = frozenset({bool, int, float, str, type(None)})


def _tensor_entry(name: str, t: torch.Tensor) -> tuple[Any, ...]:
    if t.is_inference():  # inference tensors have no version counter: never reuse features over them
        return (name, object())
    # `Tensor._version` is the counter autograd itself uses to detect in-place writes; every in-place
    # op (optimizer steps, copy_ in load_state_dict, add_ in merges) bumps it. The public alternatives
    # are worse: hashing the contents costs a pass over every weight per batch and can collide, and
    # optimizer hooks miss writes made outside an optimizer (loading, merging, prox steps).
    return (name, t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device)


def module_state(
    module: nn.Module, exclude: Sequence[str] = ()
) -> tuple[tuple[Any, ...], list[torch.Tensor]]:
    """(signature, tensors) of `module` minus submodules whose name starts with an `exclude` prefix.

    Scalar attributes are those of exact type bool, int, float, str or None, or a tuple / list of
    them; other attributes (submodules, hooks, callables) are not part of the signature.
    """
    signature: list[Any] = []
    tensors: list[torch.Tensor] = []
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
                    tensors.append(t)
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
                tensors.append(value)
        signature.append(tuple(entry))
    return tuple(signature), tensors


class PromptFeatureCache:
    """Prompt features per request, valid while the encoding module's state signature is unchanged.

    ``get(module, request, compute)`` returns ``compute()``, stored under ``request`` (class names,
    templates, mode, ...). Any state change drops every stored request. ``enabled = False`` computes
    afresh on every call (the reference the cache is tested against).
    """

    def __init__(self, enabled: bool = True, exclude: Sequence[str] = ()) -> None:
        self.enabled = enabled
        self.exclude = tuple(exclude)
        self._signature: tuple[Any, ...] | None = None
        self._refs: list[weakref.ref[torch.Tensor]] = []
        self._features: dict[Hashable, torch.Tensor] = {}

    def clear(self) -> None:
        self._signature, self._refs, self._features = None, [], {}

    def _matches(self, signature: tuple[Any, ...], tensors: list[torch.Tensor]) -> bool:
        return (
            signature == self._signature
            and len(tensors) == len(self._refs)
            and all(ref() is t for ref, t in zip(self._refs, tensors))
        )

    def get(self, module: nn.Module, request: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.enabled:
            return compute()
        device_type = next((p.device.type for p in module.parameters()), "cpu")
        request = (
            request,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        signature, tensors = module_state(module, self.exclude)
        if not self._matches(signature, tensors):
            self.clear()
            self._signature, self._refs = signature, [weakref.ref(t) for t in tensors]
        features = self._features.get(request)
        if features is None:
            # keyed on the state before computing: if computing changed state that matters (not
            # listed in `statistics_state`), the next lookup misses, which is slow but never stale
            features = compute()
            self._features[request] = features
        return features
