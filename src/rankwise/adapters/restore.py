"""Reading a saved adapter and putting it into a model: the config from its JSON, the injection that
`get_model` and `load_model` share, and the checks-then-writes restore of every layer and saved module.

`RankwiseModel` (adapters/model.py) is built on these; nothing here knows the wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise import io
from rankwise.adapters import adapter_files, saved_modules
from rankwise.adapters.adapter_files import CONFIG_FILE, WEIGHTS_FILE
from rankwise.adapters.base import AdapterConfig, AdapterLayer, AdapterStateError
from rankwise.adapters.inject import ModelEdit, inject_adapters
from rankwise.adapters.methods import get_method
from rankwise.errors import CheckpointError, ConfigError


def adapter_config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Build the config of a registered method (adapters/methods.py) from ``{"method": ..., **fields}``."""
    if not isinstance(data, dict):
        raise ConfigError("method", data, "a mapping of adapter settings with a 'method' key")
    data = dict(data)
    cls = get_method(data.pop("method", None)).config
    unknown = sorted(set(data) - set(cls.field_names()))
    if unknown:
        raise ConfigError(
            f"method.{unknown[0]}",
            data[unknown[0]],
            f"a field of {cls.__name__}: {', '.join(cls.field_names())}",
        )
    return cls(**data)


def inject(model: nn.Module, config: AdapterConfig, edit: ModelEdit) -> dict[str, AdapterLayer]:
    edit.freeze_all()
    layers = inject_adapters(model, config, edit)
    saved_modules.make_trainable(saved_modules.resolve(model, config.modules_to_save, layers))
    return layers


def check_payload(
    directory: Path, header: Any, flat: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], AdapterConfig]:
    saved = adapter_files.check_header(header, directory)
    tensors = adapter_files.group_tensors(flat, directory)
    try:
        config = adapter_config_from_dict(saved["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise adapter_files.config_error(directory, exc) from exc
    return saved, tensors, config


def read_folder(directory: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], AdapterConfig]:
    adapter_files.verify_checksums(directory)
    header = io.read_json(directory / CONFIG_FILE)
    return check_payload(directory, header, io.load_tensors(directory / WEIGHTS_FILE))


def restore(
    directory: Path, model: nn.Module, layers: dict[str, AdapterLayer], config: AdapterConfig,
    saved: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]], edit: ModelEdit,
) -> None:  # fmt: skip
    """Load a read folder into freshly injected `layers`: every check first, then the writes."""
    if set(layers) != set(saved["layers"]):
        missing = sorted(set(saved["layers"]) - set(layers))[:5]
        extra = sorted(set(layers) - set(saved["layers"]))[:5]
        raise CheckpointError(
            f"adapter in {directory} does not fit this model: saved layers missing here {missing}, "
            f"layers here not in the save {extra}"
        )
    for name, layer in layers.items():  # every check before the first merge into a base weight
        try:
            layer.check_adapter_state(saved["layers"][name], tensors.get(name, {}))
        except AdapterStateError as exc:
            raise adapter_files.layer_state_error(directory, name, exc) from None
    heads = saved_modules.resolve(model, config.modules_to_save, layers)
    saved_modules.check_state(directory, heads, saved.get("modules_to_save"), tensors)
    for name, layer in layers.items():
        if saved["layers"][name]["merged_tasks"] and not layer.base_is_quantized:  # else nothing is written
            edit.before_write(layer.base_layer.weight)
        layer.load_adapter_state(saved["layers"][name], tensors.get(name, {}))
    saved_modules.load_state(heads, tensors, edit)
