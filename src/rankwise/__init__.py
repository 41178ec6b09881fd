"""rankwise: continual learning of pre-trained models with rank-level adapters (CoDyRA, MoRAM)."""

__version__ = "0.1.0"

from rankwise.adapters import (  # noqa: E402
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
