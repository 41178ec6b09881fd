"""The adapter folder on disk: ``adapter_config.json``, ``adapter_model.safetensors``, ``checksums.json``.

The weights file holds each adapted layer's tensors as ``"<layer>::<key>"`` and, with
`AdapterConfig.modules_to_save`, each saved module's state as ``"<module>::<key>"`` (adapters/saved_modules.py).

Writing: both files atomically (through `rankwise.io`), then ``checksums.json`` = {file name: SHA-256}
(the same format the engine's task checkpoints use, so either writer's list verifies either folder).
Reading: every check runs before the caller touches a model: the checksums when the list is present
(a flipped bit anywhere is refused), the JSON's structure and types, and every tensor finite. Each
refusal is a `CheckpointError` on one line that names the file and the field or tensor.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from rankwise import io
from rankwise.adapters.base import AdapterStateError
from rankwise.adapters.base import short_repr as short
from rankwise.errors import CheckpointError
from rankwise.io import sha256_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CHECKSUMS_FILE = "checksums.json"
FORMAT = "rankwise-adapter"
FORMAT_VERSION = 1
# The folder keeps peft's file names (the vocabulary users know), so peft would read it as its own and
# fail on a bare ``KeyError: 'peft_type'``. This value in the ``peft_type`` field makes peft's loader
# fail instead with a KeyError that says what the folder is and what to do (tests/test_export.py).
PEFT_TYPE_MARKER = (
    "RANKWISE_ADAPTER: not a peft adapter but a rankwise one; load it with rankwise.load_model(base_model, "
    "folder), or write a peft folder with `rankwise export RUN_DIR --to peft` / rankwise.export_peft"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


# -- writing ------------------------------------------------------------------------------------------
def check_folder_target(directory: Path) -> None:
    """Refuse, before writing anything, a target that is a file or lies below one."""
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise CheckpointError(
            f"cannot save the adapter into {directory}: {existing} is a file, not a folder; choose another path"
        )


def write_adapter_folder(directory: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write the weights, the config and their checksums into `directory` (created if needed)."""
    check_folder_target(directory)
    try:
        io.save_tensors(directory / WEIGHTS_FILE, tensors, metadata={"format": FORMAT})
        io.write_json(directory / CONFIG_FILE, header)
        sums = {name: sha256_file(directory / name) for name in (CONFIG_FILE, WEIGHTS_FILE)}
        io.write_json(directory / CHECKSUMS_FILE, sums)
    except OSError as exc:
        raise CheckpointError(
            f"cannot save the adapter into {directory}: {exc.strerror or exc} ({exc.filename or directory})"
        ) from exc


# -- reading ------------------------------------------------------------------------------------------
def verify_checksums(directory: Path) -> None:
    """When `directory` holds checksums.json, both adapter files must be listed there and match it."""
    path = directory / CHECKSUMS_FILE
    if not path.exists():
        return  # folders written before checksums existed: the tensor checks below still apply
    sums = io.read_json(path)
    if not isinstance(sums, dict):
        raise CheckpointError(f"{path}: expected a JSON object of file name -> SHA-256, found {type(sums).__name__}")
    for name, expected in sums.items():
        if name in (CONFIG_FILE, WEIGHTS_FILE) and (
            not isinstance(expected, str) or not _SHA256.fullmatch(expected)
        ):
            raise CheckpointError(f"{path}: field {name}={short(expected)} is invalid: expected a SHA-256 hex digest")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in sums]
    if missing:
        raise CheckpointError(f"{path}: field(s) {', '.join(missing)} missing; every adapter file must be listed")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        expected = sums[name]
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"missing file: {file} (listed in {path})")
        if sha256_file(file) != expected:
            raise CheckpointError(
                f"{file} is corrupted or was changed: its SHA-256 differs from the one in {path}; it was not loaded"
            )


def _field_error(path: Path, field: str, value: Any, expected: str) -> CheckpointError:
    return CheckpointError(f"{path}: field {field}={short(value)} is invalid: expected {expected}")


def read_header(directory: Path) -> dict[str, Any]:
    """adapter_config.json, checked: format, version, and the types of config / tasks / current_task / layers."""
    return check_header(io.read_json(directory / CONFIG_FILE), directory)


def check_header(saved: Any, directory: Path) -> dict[str, Any]:
    """The checks of `read_header` on a header already in memory (e.g. kept inside a Lightning checkpoint)."""
    path = directory / CONFIG_FILE
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a JSON {type(saved).__name__}")
    if saved.get("format") != FORMAT:
        if isinstance(saved.get("peft_type"), str) and saved["peft_type"] != PEFT_TYPE_MARKER:
            raise CheckpointError(
                f"{path} is a peft adapter (peft_type={short(saved['peft_type'])}), not a rankwise one; "
                "load it with peft.PeftModel.from_pretrained(base_model, folder)"
            )
        raise CheckpointError(f"{path} is not a rankwise adapter (format={short(saved.get('format'))})")
    if saved.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise _field_error(path, "format_version", saved["format_version"], f"{FORMAT_VERSION} (this rankwise)")
    if not isinstance(saved.get("config"), dict):
        raise _field_error(path, "config", saved.get("config"), "a JSON object of adapter settings")
    tasks = saved.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise _field_error(path, "tasks", tasks, "a list of task names")
    if saved.get("current_task") is not None and not isinstance(saved["current_task"], str):
        raise _field_error(path, "current_task", saved["current_task"], "a task name or null")
    layers = saved.get("layers")
    if not isinstance(layers, dict):
        raise _field_error(path, "layers", layers, "a JSON object of layer name -> layer metadata")
    for name, meta in layers.items():
        if not isinstance(meta, dict):
            raise _field_error(path, f"layers[{name!r}]", meta, "a JSON object of layer metadata")
    heads = saved.get("modules_to_save", {})  # absent in folders written before modules_to_save existed
    if not isinstance(heads, dict) or not all(
        isinstance(keys, list) and all(isinstance(k, str) for k in keys) for keys in heads.values()
    ):
        raise _field_error(path, "modules_to_save", heads, "a JSON object of module name -> list of tensor names")
    return saved


def read_tensors(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {key: tensor}} from adapter_model.safetensors; a NaN or inf anywhere is refused."""
    return group_tensors(io.load_tensors(directory / WEIGHTS_FILE), directory)


def group_tensors(flat: dict[str, torch.Tensor], directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"layer::key": tensor} -> {layer: {key: tensor}}; a NaN or inf anywhere is refused."""
    path = directory / WEIGHTS_FILE
    by_layer: dict[str, dict[str, torch.Tensor]] = {}
    for full_key, tensor in flat.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: tensor {full_key} holds {bad} non-finite value(s) (NaN or inf): the file is "
                "corrupted or was saved from a diverged run; it was not loaded"
            )
        name, _, key = full_key.partition("::")
        by_layer.setdefault(name, {})[key] = tensor
    return by_layer


def layer_state_error(directory: Path, layer: str, exc: AdapterStateError) -> CheckpointError:
    """A layer's refusal, located: a field of adapter_config.json or a tensor of the weights file."""
    if exc.kind == "field":
        return CheckpointError(f"{directory / CONFIG_FILE}: field layers[{layer!r}].{exc.key}: {exc.problem}")
    return CheckpointError(f"{directory / WEIGHTS_FILE}: tensor {layer}::{exc.key} {exc.problem}")


def config_error(directory: Path, exc: Exception) -> CheckpointError:
    """An invalid ``config`` section (a ConfigError, or a TypeError from a value of the wrong type)."""
    return CheckpointError(f"{directory / CONFIG_FILE}: field config: {exc}".replace("\n", " "))

