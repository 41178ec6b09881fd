"""Modules trained in full next to the adapters (`AdapterConfig.modules_to_save`), e.g. a new head.

A pre-trained encoder gets a classification head it has never seen (``BertForSequenceClassification``'s
``classifier``, a causal LM's ``score``); a low-rank adapter cannot train it, so the head is trained
in full and saved with the adapter. Names match like a ``target_modules`` list: ``"classifier"`` is
the module ``classifier`` or any module whose full name ends in ``.classifier``.

On disk (adapters/adapter_files.py) each saved module's ``state_dict()`` goes into the adapter's
safetensors file as ``"<module>::<key>"`` (``classifier::weight``) and adapter_config.json lists
``"modules_to_save": {"<module>": ["<key>", ...]}``. Loading copies the tensors into the module
in place, so a reloaded head is bit-identical when its dtype is the saved one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise.adapters.adapter_files import CONFIG_FILE, WEIGHTS_FILE
from rankwise.adapters.inject import ModelEdit, matches
from rankwise.errors import CheckpointError, ConfigError

__all__ = ["check_state", "load_state", "make_trainable", "resolve", "state"]


def resolve(model: nn.Module, names: list[str] | None, adapted: Iterable[str]) -> dict[str, nn.Module]:
    """{full module name: module} for every name in `names` (the outermost match of each).

    A name that matches no module, or a match that holds an adapted layer or lies inside one (its
    frozen base would become trainable), raises ConfigError on ``modules_to_save``.
    """
    if not names:
        return {}
    all_names = [n for n, _ in model.named_modules() if n]
    found: dict[str, nn.Module] = {}
    for name in names:
        hits = [n for n in all_names if matches(n, [name])]
        if not hits:
            near = difflib.get_close_matches(name, sorted({n.rpartition(".")[2] for n in all_names}), n=5)
            raise ConfigError(
                "modules_to_save", name,
                f"the name of a module of {type(model).__name__} (nearest: {near or 'none'}; "
                f"top-level modules: {[n for n, _ in model.named_children()][:10]})",
            )  # fmt: skip
        for hit in hits:
            if not any(hit.startswith(outer + ".") for outer in hits):  # a match inside another: the outer
                found[hit] = model.get_submodule(hit)
    adapted = list(adapted)
    for name in found:
        clash = next((a for a in adapted if a == name or a.startswith(name + ".") or name.startswith(a + ".")), None)
        if clash is not None:
            raise ConfigError(
                "modules_to_save", name,
                f"a module without adapters (it overlaps the adapted layer {clash}); name the head itself, "
                "or leave that layer out with exclude_modules",
            )  # fmt: skip
    return dict(sorted(found.items()))


def make_trainable(modules: dict[str, nn.Module]) -> None:
    for module in modules.values():
        for p in module.parameters():
            p.requires_grad_(True)


def state(modules: dict[str, nn.Module]) -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
    """(header entry {module: [state keys]}, tensors {"module::key": tensor}) of the saved modules."""
    meta: dict[str, list[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        module_state = module.state_dict()
        meta[name] = sorted(module_state)
        tensors.update({f"{name}::{key}": t for key, t in module_state.items()})
    return meta, tensors


def check_state(
    directory: Path, modules: dict[str, nn.Module], meta: Any, tensors: dict[str, dict[str, torch.Tensor]]
) -> None:
    """CheckpointError unless `load_state` can load the saved modules into `modules`; changes nothing."""
    meta = {} if meta is None else meta
    if set(meta) != set(modules):
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: field modules_to_save lists {sorted(meta)}, but this "
            f"model's config saves {sorted(modules)}"
        )
    for name, module in modules.items():
        own = module.state_dict()
        if sorted(meta[name]) != sorted(own):
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: field modules_to_save[{name!r}] lists {sorted(meta[name])}, "
                f"but the module here has {sorted(own)}"
            )
        for key, target in own.items():
            saved = tensors.get(name, {}).get(key)
            if saved is None:
                raise CheckpointError(f"{directory / WEIGHTS_FILE}: tensor {name}::{key} is missing")
            if saved.shape != target.shape:
                raise CheckpointError(
                    f"{directory / WEIGHTS_FILE}: tensor {name}::{key} has shape "
                    f"{tuple(saved.shape)} but this model needs {tuple(target.shape)} (another head size?)"
                )


@torch.no_grad()
def load_state(modules: dict[str, nn.Module], tensors: dict[str, dict[str, torch.Tensor]], edit: ModelEdit) -> None:
    """Copy the saved tensors into the modules in place (after `check_state`); `edit` can undo it."""
    for name, module in modules.items():
        for key, target in module.state_dict(keep_vars=True).items():
            edit.before_write(target)
            target.copy_(tensors[name][key])
