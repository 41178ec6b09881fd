"""Rank-level adapters: LoRA, CoDyRA and MoRAM layers, injection and the task lifecycle.

The methods are listed in one table (`rankwise.adapters.methods`); `register_method` adds one.
"""

from rankwise.adapters.base import AdapterConfig, AdapterLayer
from rankwise.adapters.codyra import CoDyRAConfig, CoDyRALinear
from rankwise.adapters.export import delta_state_dict, export_peft
from rankwise.adapters.lora import LoRAConfig, LoRALinear
from rankwise.adapters.methods import Method, get_method, method_names, register_method
from rankwise.adapters.model import RankwiseModel, adapter_config_from_dict, get_model, load_model
from rankwise.adapters.moram import MoRAMConfig, MoRAMLinear
from rankwise.adapters.presets import TARGET_PRESETS

__all__ = [
    "AdapterConfig",
    "AdapterLayer",
    "CoDyRAConfig",
    "CoDyRALinear",
    "LoRAConfig",
    "LoRALinear",
    "Method",
    "MoRAMConfig",
    "MoRAMLinear",
    "RankwiseModel",
    "TARGET_PRESETS",
    "adapter_config_from_dict",
    "delta_state_dict",
    "export_peft",
    "get_method",
    "get_model",
    "load_model",
    "method_names",
    "register_method",
]
