"""Find the layers a config targets and wrap them, in place, with adapter layers."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from rankwise.adapters.attention import SplitMultiheadAttention
from rankwise.adapters.base import AdapterConfig, AdapterLayer
from rankwise.adapters.methods import LAYER_CLASSES, method_of
from rankwise.adapters.name_regex import compile_name_pattern
from rankwise.adapters.presets import TARGET_PRESETS
from rankwise.errors import ConfigError, TargetModulesError

__all__ = ["LAYER_CLASSES", "ModelEdit", "inject_adapters", "matches", "resolve_targets", "set_submodule", "transaction"]
SPLIT_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj")


def resolve_targets(config: AdapterConfig) -> list[str] | str:
    if config.target_modules is not None:
        return config.target_modules
    if config.preset is not None:
        return TARGET_PRESETS[config.preset]
    raise ConfigError(
        "target_modules",
        None,
        "module names or a regex, or set `preset` to one of " + ", ".join(sorted(TARGET_PRESETS)),
    )


def matches(name: str, targets: list[str] | str | None) -> bool:
    """A list matches a name equal to an item or ending in ``.item``; a string is a regex on the full name.

    The regex is matched in time linear in the name (`name_regex`): a pattern such as ``(a+)+X`` that
    makes Python's backtracking `re` run for hours is run on an NFA instead, and one that needs
    backtracking (backreferences, lookarounds) is refused with a ConfigError on ``target_modules``.
    """
    if targets is None:
        return False
    if isinstance(targets, str):
        return compile_name_pattern(targets).fullmatch(name)
    return any(name == t or name.endswith("." + t) for t in targets)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class ModelEdit:
    """Every change injection and loading make to a user's model, so that a failure undoes all of it.

    Records each module replacement (parent, attribute, old module), a CPU copy of each tensor before
    its first in-place write (`before_write`), and, at the start, every parameter's requires_grad
    flag. `rollback` restores them in reverse order: the model then has the same module objects,
    parameter objects, flags and state_dict values, bit for bit, as before the edit began.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._flags = [(p, p.requires_grad) for p in model.parameters()]
        self._modules: list[tuple[nn.Module, str, nn.Module]] = []
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._saved: set[int] = set()

    def replace(self, name: str, module: nn.Module) -> None:
        """Put `module` at dotted path `name`, remembering what was there."""
        parent = _parent(self.model, name)
        child = name.rpartition(".")[2]
        self._modules.append((parent, child, getattr(parent, child)))
        setattr(parent, child, module)

    def before_write(self, tensor: torch.Tensor) -> None:
        """Call before changing `tensor` in place (e.g. merging factors into a base weight)."""
        if id(tensor) not in self._saved:
            self._saved.add(id(tensor))
            self._tensors.append((tensor, tensor.detach().to("cpu", copy=True)))

    def freeze_all(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def rollback(self) -> None:
        for parent, child, old in reversed(self._modules):
            setattr(parent, child, old)
        for tensor, backup in reversed(self._tensors):
            tensor.copy_(backup)
        for p, flag in self._flags:
            p.requires_grad_(flag)


@contextmanager
def transaction(model: nn.Module) -> Iterator[ModelEdit]:
    """``with transaction(model) as edit:`` - any exception inside (KeyboardInterrupt included) rolls back."""
    edit = ModelEdit(model)
    try:
        yield edit
    except BaseException:
        edit.rollback()
        raise


def inject_adapters(
    model: nn.Module, config: AdapterConfig, edit: ModelEdit | None = None
) -> dict[str, AdapterLayer]:
    """Wrap every targeted nn.Linear of `model` in place; return {module name: adapter layer}.

    Any nn.MultiheadAttention whose q/k/v/out_proj would be targeted is first replaced by an
    equivalent SplitMultiheadAttention. Raises TargetModulesError, listing the nearest module
    names, when nothing matches. All-or-nothing: on any error the model is left as it was (the
    changes go through `edit`, or through a transaction of their own when `edit` is None).
    """
    if edit is None:
        with transaction(model) as own:
            return inject_adapters(model, config, own)
    targets = resolve_targets(config)
    exclude = config.exclude_modules
    if any(isinstance(m, AdapterLayer) for m in model.modules()):
        raise ConfigError(
            "model", type(model).__name__, "a model without adapters (this one already has some)"
        )
    to_split = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        and any(
            matches(f"{name}.{child}", targets) and not matches(f"{name}.{child}", exclude)
            for child in SPLIT_NAMES
        )
    ]
    for name in to_split:  # all checked before the first split
        _check_splittable(name, model.get_submodule(name), targets)
    for name in to_split:
        edit.replace(name, SplitMultiheadAttention(model.get_submodule(name)))

    layer_cls = method_of(config).layer
    layers: dict[str, AdapterLayer] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and matches(name, targets) and not matches(name, exclude):
            if isinstance(_parent(model, name), nn.MultiheadAttention):
                continue  # a fused attention's out_proj is never called as a module
            layer = layer_cls(module, config)
            edit.replace(name, layer)
            layers[name] = layer
    if not layers:
        raise TargetModulesError(_no_match_message(model, targets))
    return layers


def _check_splittable(name: str, mha: nn.MultiheadAttention, targets: list[str] | str) -> None:
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ConfigError(
            "target_modules",
            targets,
            f"layers that can carry adapters: {name} is an nn.MultiheadAttention with add_bias_kv or "
            f"add_zero_attn, which cannot be split into q/k/v; leave it out with exclude_modules: ['{name}.q_proj', ...]",
        )


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


def _no_match_message(model: nn.Module, targets: list[str] | str) -> str:
    linear_names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.MultiheadAttention))]
    leaf_names = sorted({n.rpartition(".")[2] for n in linear_names})
    queries = [targets] if isinstance(targets, str) else targets
    near: list[str] = []
    for query in queries:
        for candidate in difflib.get_close_matches(query, leaf_names + linear_names, n=5, cutoff=0.4):
            if candidate not in near:
                near.append(candidate)
    return (
        f"target_modules={targets!r} matched no nn.Linear in {type(model).__name__}. "
        f"Nearest module names: {near[:8] or 'none'}. Linear layer names in this model: {leaf_names[:20]}"
    )
