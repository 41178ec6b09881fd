"""rankwise: continual learning of pre-trained models with rank-level adapters (CoDyRA, MoRAM).

The adapter API (``rankwise.get_model``, ``rankwise.CoDyRAConfig``, ...) is imported on first use
(PEP 562), so ``import rankwise``, ``rankwise --version`` and the preset lookup do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rankwise._version import __version__

if TYPE_CHECKING:  # the names below, for type checkers and IDEs
    from rankwise.adapters import (
        TARGET_PRESETS,
        CoDyRAConfig,
        LoRAConfig,
        MoRAMConfig,
        RankwiseModel,
        adapter_config_from_dict,
        delta_state_dict,
        export_peft,
        get_model,
        load_model,
    )

__all__ = [
    "CoDyRAConfig",
    "LoRAConfig",
    "MoRAMConfig",
    "RankwiseModel",
    "TARGET_PRESETS",
    "__version__",
    "adapter_config_from_dict",
    "delta_state_dict",
    "export_peft",
    "get_model",
    "load_model",
]
_ADAPTER_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _ADAPTER_API:
        value = getattr(importlib.import_module("rankwise.adapters"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'rankwise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ADAPTER_API))
