"""LoRA, the sequential baseline: y = W x + b + (lora_alpha / r) B A dropout(x).

Init as in LoRA/peft: A kaiming-uniform (a = sqrt(5)), B = 0, so the adapted layer starts equal to
the base layer. By default the same adapter keeps training across tasks (sequential fine-tuning of
one LoRA); with ``merge_on_task_end=True`` it is merged into W after each task and a fresh one starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.adapters.base import (
    AdapterConfig,
    AdapterLayer,
    LayerMemory,
    expect_tensor,
    kaiming_rows,
    meta_bool,
)
from rankwise.errors import ConfigError


@dataclass
class LoRAConfig(AdapterConfig):
    """Plain LoRA. ``scaling = lora_alpha / r`` (``lora_alpha=None`` means scaling 1)."""

    method = "lora"

    lora_alpha: float | None = field(default=16.0, metadata={"help": "scaling = lora_alpha / r"})
    merge_on_task_end: bool = field(
        default=False,
        metadata={"help": "merge into W after each task and start a fresh adapter (else keep training one)"},
    )

    def layer_memory(self, in_features: int, out_features: int, earlier_tasks: int, element: int) -> LayerMemory:
        """A fresh (A, B) per task when merging; each merged task's (A_i, B_i) is kept (the merge
        history that a saved adapter replays bit-identically). Sequential LoRA keeps nothing."""
        per_task = self.r * (in_features + out_features)
        return LayerMemory(trainable=per_task, kept_bytes=per_task * earlier_tasks * element if self.merge_on_task_end else 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.merge_on_task_end, bool):
            raise ConfigError("merge_on_task_end", self.merge_on_task_end, "true or false")


class LoRALinear(AdapterLayer):
    """y = W x + b + s * B (A dropout(x)),  A: (r, d_in), B: (d_out, r), s = lora_alpha / r."""

    mergeable = True

    def __init__(self, base_layer: nn.Linear, config: LoRAConfig) -> None:
        super().__init__(base_layer, config)
        self.merge_on_task_end = config.merge_on_task_end
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None

    def has_delta(self) -> bool:
        return self.lora_A is not None

    def low_rank_input(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)
        return h * self.scaling if self.scaling != 1.0 else h  # scale the r-wide side, not the output

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.low_rank_input(x), self.lora_B)

    def begin_task(self) -> None:
        super().begin_task()
        if self.lora_A is None:
            like = self._factor_like()
            self.lora_A = nn.Parameter(kaiming_rows(self.r, self.in_features, like))
            self.lora_B = nn.Parameter(
                torch.zeros(self.out_features, self.r, dtype=like.dtype, device=like.device)
            )
        else:
            self.lora_A.requires_grad_(True)
            self.lora_B.requires_grad_(True)

    def end_task(self) -> None:
        super().end_task()
        if self.merge_on_task_end:
            self.merge_factors(self.lora_A.detach(), self.lora_B.detach() * self.scaling)
            self.lora_A = None
            self.lora_B = None
        else:
            self.lora_A.requires_grad_(False)
            self.lora_B.requires_grad_(False)

    def merge_current(self) -> None:
        """Fold the live adapter into W (used by merge_and_unload)."""
        if self.lora_A is not None:
            self.merge_factors(self.lora_A.detach(), self.lora_B.detach() * self.scaling)
            self.lora_A = None
            self.lora_B = None

    def adapter_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta, tensors = super().adapter_state()
        meta["has_adapter"] = self.lora_A is not None
        if self.lora_A is not None:
            tensors["lora_A"] = self.lora_A
            tensors["lora_B"] = self.lora_B
        return meta, tensors

    def check_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().check_adapter_state(meta, tensors)
        if meta_bool(meta, "has_adapter"):
            expect_tensor(tensors, "lora_A", (self.r, self.in_features))
            expect_tensor(tensors, "lora_B", (self.out_features, self.r))

    def load_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_adapter_state(meta, tensors)
        if meta["has_adapter"]:
            like = self._factor_like()
            self.lora_A = nn.Parameter(
                tensors["lora_A"].to(like.device), requires_grad=bool(meta["task_active"])
            )
            self.lora_B = nn.Parameter(
                tensors["lora_B"].to(like.device), requires_grad=bool(meta["task_active"])
            )
        self.task_active = bool(meta["task_active"])

    def report(self) -> dict[str, Any]:
        return {**super().report(), "r": self.r, "merged_tasks": self.merged_tasks}
