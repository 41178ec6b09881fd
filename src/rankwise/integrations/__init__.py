"""Your training loop with rankwise's lifecycle: transformers' Trainer and Lightning.

``rankwise.integrations.transformers``: `RankwiseTrainer` (adapter-only checkpoints, resume, one task
per `train_task`) and `RankwiseTrainerCallback` (the lifecycle inside a plain ``transformers.Trainer``).
``rankwise.integrations.lightning``: `RankwiseCallback` (the lifecycle and adapter-only checkpoint
contents inside ``lightning.pytorch.Trainer``) and `load_checkpoint_adapter`.

Each submodule imports its framework; this package imports neither (PEP 562: the names below load
their module on first use), so ``import rankwise.integrations`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "RankwiseTrainer": "transformers",
    "RankwiseTrainerCallback": "transformers",
    "RankwiseCallback": "lightning",
    "load_checkpoint_adapter": "lightning",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"rankwise.integrations.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'rankwise.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
