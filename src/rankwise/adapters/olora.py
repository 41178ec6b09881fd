"""O-LoRA: a new LoRA per task, trained orthogonal to every earlier task's A (Wang et al. 2023).

"Orthogonal Subspace Learning for Language Model Continual Learning" (official code cmnfriend/O-LoRA).
Task t trains a fresh (A_t, B_t); the earlier tasks' factors are frozen and still used:

    y = W x + b + s * sum_{i <= t} B_i A_i x,          s = lora_alpha / r
    loss = task_loss + lambda_1 * L_orth + lambda_2 * L_2

    L_orth = sum_{i < t} sum_{j,k} |(A_t A_i^T)_{jk}|      (orthogonality_norm="l1", the official code)
           = sum_{i < t} ||A_t A_i^T||_F^2                 (orthogonality_norm="squared", the paper's text)
    L_2    = ||A_t||_F + ||B_t||_F                          (l2_norm="frobenius", the official code)
           = ||A_t||_F^2 + ||B_t||_F^2                      (l2_norm="squared")

Official defaults (src/uie_trainer_lora.py, src/run_uie_lora.py, scripts/order_*.sh): lambda_1 = 0.5,
lambda_2 = 0, r = 8, lora_alpha = 32, lora_dropout = 0.1; the terms are summed over every adapted
layer (`RankwiseModel.extra_loss`) and the engine adds them to each training step's loss.

Earlier tasks: the official code keeps them as separate frozen LoRA modules. Here they are merged
into W at the end of their task (W <- W + s B_i A_i, computed in float32, as LoRA's
``merge_on_task_end``) and their A_i kept as buffers for L_orth. The forward is the same sum up to
rounding in W's dtype, memory does not grow with the number of tasks, the layer is mergeable, and
saving/loading replays the merges bit-identically. Frozen factors are buffers, never parameters, so
they get no gradient; the live (A_t, B_t) are the only trainable tensors (`trainable_parameters`),
which the engine's DDP gradient averaging covers, and the extra loss is computed identically on
every process from those replicated tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from rankwise.adapters.base import AdapterConfig, AdapterLayer, LayerMemory
from rankwise.adapters.lora import LoRALinear
from rankwise.errors import ConfigError

ORTHOGONALITY_NORMS = ("l1", "squared")
L2_NORMS = ("frobenius", "squared")


def _is_weight(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < float("inf")


@dataclass
class OLoRAConfig(AdapterConfig):
    """O-LoRA: per-task LoRA with an orthogonality penalty against earlier tasks' A (official defaults)."""

    method: ClassVar[str] = "olora"

    r: int = field(default=8, metadata={"help": "rank of each task's LoRA (official 8)"})
    lora_alpha: float | None = field(
        default=32.0, metadata={"help": "scaling = lora_alpha / r (official 32); None means scaling 1"}
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter's input (official 0.1)"})
    lambda_1: float = field(
        default=0.5, metadata={"help": "weight of the orthogonality loss between A_t and earlier A_i (official 0.5)"}
    )
    lambda_2: float = field(
        default=0.0, metadata={"help": "weight of the norm penalty on the current A_t, B_t (official 0)"}
    )
    orthogonality_norm: str = field(
        default="l1",
        metadata={"help": "l1: sum |A_t A_i^T| (official code); squared: sum (A_t A_i^T)^2 (paper's formula)"},
    )
    l2_norm: str = field(
        default="frobenius",
        metadata={"help": "frobenius: ||A_t||_F + ||B_t||_F (official code); squared: the squared norms"},
    )

    def layer_memory(self, in_features: int, out_features: int, earlier_tasks: int, element: int) -> LayerMemory:
        """A fresh (A_t, B_t) per task; each earlier task's (A_i, B_i) is kept (A_i for L_orth, both
        for the merge history that a saved adapter replays)."""
        per_task = self.r * (in_features + out_features)
        return LayerMemory(trainable=per_task, kept_bytes=per_task * earlier_tasks * element)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lambda_1", "lambda_2"):
            if not _is_weight(getattr(self, name)):
                raise ConfigError(name, getattr(self, name), "a finite number >= 0")
        if self.orthogonality_norm not in ORTHOGONALITY_NORMS:
            raise ConfigError("orthogonality_norm", self.orthogonality_norm, "one of 'l1', 'squared'")
        if self.l2_norm not in L2_NORMS:
            raise ConfigError("l2_norm", self.l2_norm, "one of 'frobenius', 'squared'")


class OLoRALinear(LoRALinear):
    """y = W' x + b + s B_t A_t dropout(x), W' = W + s sum_{i<t} B_i A_i; extra loss as in the module doc."""

    mergeable = True

    def __init__(self, base_layer: nn.Linear, config: OLoRAConfig) -> None:
        AdapterLayer.__init__(self, base_layer, config)  # LoRALinear's own reads merge_on_task_end
        self.merge_on_task_end = True  # each task gets a fresh (A_t, B_t); the old one is folded into W
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.lambda_1 = float(config.lambda_1)
        self.lambda_2 = float(config.lambda_2)
        self.orthogonality_norm = config.orthogonality_norm
        self.l2_norm = config.l2_norm

    def orthogonality_loss(self) -> torch.Tensor | None:
        """L_orth of the live A_t against every earlier task's A_i; None with no live adapter."""
        if self.lora_A is None:
            return None
        total = self.lora_A.new_zeros(())
        for A_i, _ in self.merged_history():
            product = self.lora_A @ A_i.to(self.lora_A.dtype).t()  # (r, r_i); gradient reaches A_t only
            total = total + (product.abs().sum() if self.orthogonality_norm == "l1" else product.pow(2).sum())
        return total

    def l2_loss(self) -> torch.Tensor | None:
        """L_2 of the live (A_t, B_t); None with no live adapter."""
        if self.lora_A is None:
            return None
        if self.l2_norm == "frobenius":
            return torch.linalg.vector_norm(self.lora_A) + torch.linalg.vector_norm(self.lora_B)
        return self.lora_A.pow(2).sum() + self.lora_B.pow(2).sum()

    def extra_loss(self) -> torch.Tensor | None:
        """lambda_1 * L_orth + lambda_2 * L_2 while a task trains; None otherwise or when both weights
        are 0 (then nothing is added, as for plain LoRA)."""
        if self.lora_A is None or not self.task_active or (self.lambda_1 == 0.0 and self.lambda_2 == 0.0):
            return None
        total = self.lora_A.new_zeros(())
        if self.lambda_1 and self.merged_tasks:
            total = total + self.lambda_1 * self.orthogonality_loss()
        if self.lambda_2:
            total = total + self.lambda_2 * self.l2_loss()
        return total

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambda_1={self.lambda_1:g}, lambda_2={self.lambda_2:g}"

