"""Find the layers a config targets and wrap them, in place, with adapter layers."""

from __future__ import annotations

import difflib
import re

from torch import nn

from rankwise.adapters.attention import SplitMultiheadAttention
from rankwise.adapters.base import AdapterConfig, AdapterLayer
from rankwise.adapters.codyra import CoDyRAConfig, CoDyRALinear
from rankwise.adapters.lora import LoRAConfig, LoRALinear
from rankwise.adapters.moram import MoRAMConfig, MoRAMLinear
from rankwise.adapters.presets import TARGET_PRESETS
from rankwise.errors import ConfigError, TargetModulesError

LAYER_CLASSES: dict[type[AdapterConfig], type[AdapterLayer]] = {
    LoRAConfig: LoRALinear,
    CoDyRAConfig: CoDyRALinear,
    MoRAMConfig: MoRAMLinear,
}
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
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def inject_adapters(model: nn.Module, config: AdapterConfig) -> dict[str, AdapterLayer]:
    """Wrap every targeted nn.Linear of `model` in place; return {module name: adapter layer}.

    Any nn.MultiheadAttention whose q/k/v/out_proj would be targeted is first replaced by an
    equivalent SplitMultiheadAttention. Raises TargetModulesError, listing the nearest module
    names, when nothing matches.
    """
    targets = resolve_targets(config)
    exclude = config.exclude_modules
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention) and any(
            matches(f"{name}.{child}", targets) and not matches(f"{name}.{child}", exclude)
            for child in SPLIT_NAMES
        ):
            set_submodule(model, name, SplitMultiheadAttention(module))

    layer_cls = LAYER_CLASSES[type(config)]
    inside_adapter = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    if inside_adapter:
        raise ConfigError(
            "model", type(model).__name__, "a model without adapters (this one already has some)"
        )
    layers: dict[str, AdapterLayer] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and matches(name, targets) and not matches(name, exclude):
            if isinstance(_parent(model, name), nn.MultiheadAttention):
                continue  # a fused attention's out_proj is never called as a module
            layer = layer_cls(module, config)
            set_submodule(model, name, layer)
            layers[name] = layer
    if not layers:
        raise TargetModulesError(_no_match_message(model, targets))
    return layers


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
