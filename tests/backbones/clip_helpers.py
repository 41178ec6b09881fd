"""Test helpers for the CLIP backbones: write a tiny open_clip model as a ``local-dir:`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rankwise import io


def save_open_clip(model: nn.Module, folder: str | Path, model_cfg: dict[str, Any]) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors``: loadable as ``local-dir:<folder>``.

    The layout open_clip's own hub export writes: the JSON holds ``model_cfg`` and the visual tower's
    ``preprocess_cfg``; the safetensors file holds the full state dict.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(
        folder / "open_clip_config.json",
        {"model_cfg": model_cfg, "preprocess_cfg": dict(model.visual.preprocess_cfg)},
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    io.save_tensors(folder / "open_clip_model.safetensors", state)
    return folder
