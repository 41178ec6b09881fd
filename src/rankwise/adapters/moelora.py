"""MoE-LoRA: one LoRA expert per task and a learned router over experts (the task-level baseline).

Task t adds expert (A_t, B_t) and a router row w_t; earlier experts are frozen and kept:

    logits_e(x) = w_e . x                                   (router W_r: d_in -> E, one row per expert)
    gate(x)     = softmax(logits(x) / tau)                  (top_k: softmax over the k largest logits,
                                                             the others get gate 0)
    y = W x + b + sum_{e <= t} gate_e(x) * s * B_e A_e dropout(x),     s = lora_alpha / r

Defaults: r = 8 per expert, lora_alpha = 16 (s = 2), tau = 1, top_k = None (dense softmax over every
expert), the new router row initialised at 0 (``router_init_std``), earlier router rows frozen
(``train_old_router_rows=False``: a task then cannot move traffic away from an earlier task's expert
except through its own row). A: kaiming-uniform, B = 0, so each new expert starts as a no-op.

This is the task-level granularity MoRAM argues against: here a router network picks whole task
experts, while MoRAM routes rank-1 atoms by their own key response with no router network. Having
both in one engine makes the rank-level vs task-level claim testable. Routing depends on the input,
so the layer cannot be folded into W (`mergeable = False`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.adapters.base import (
    AdapterConfig,
    AdapterLayer,
    AdapterStateError,
    LayerMemory,
    expect_tensor,
    kaiming_rows,
    meta_bool,
    meta_int,
)
from rankwise.errors import ConfigError


@dataclass
class MoELoRAConfig(AdapterConfig):
    """Task-level MoE-LoRA: a LoRA expert per task mixed by a learned softmax router."""

    method: ClassVar[str] = "moe-lora"
    inference_options: ClassVar[tuple[str, ...]] = ("top_k", "tau")
    bank_grows_per_task: ClassVar[bool] = True

    r: int = field(default=8, metadata={"help": "rank of each task's expert"})
    lora_alpha: float | None = field(
        default=16.0, metadata={"help": "scaling = lora_alpha / r per expert; None means scaling 1"}
    )
    tau: float = field(default=1.0, metadata={"help": "router softmax temperature: gate = softmax(logits / tau)"})
    top_k: int | None = field(
        default=None, metadata={"help": "experts kept per token (softmax over the k largest logits); None = all"}
    )
    router_init_std: float = field(
        default=0.0, metadata={"help": "std of the new task's router row at init (0: zeros)"}
    )
    train_old_router_rows: bool = field(
        default=False, metadata={"help": "also train earlier tasks' router rows (else they stay frozen)"}
    )

    def layer_memory(self, in_features: int, out_features: int, earlier_tasks: int, element: int) -> LayerMemory:
        """Per task an expert (A, B) and a router row (1 x in) train; every earlier expert and row is kept."""
        per_task = self.r * (in_features + out_features) + in_features
        return LayerMemory(trainable=per_task, kept_bytes=per_task * earlier_tasks * element)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.tau, bool)
            or not isinstance(self.tau, (int, float))
            or not math.isfinite(self.tau)
            or self.tau <= 0
        ):
            raise ConfigError("tau", self.tau, "a positive finite number")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ConfigError("top_k", self.top_k, "an integer >= 1 or None (every expert)")
        std = self.router_init_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ConfigError("router_init_std", std, "a finite number >= 0")
        if not isinstance(self.train_old_router_rows, bool):
            raise ConfigError("train_old_router_rows", self.train_old_router_rows, "true or false")


def gates(logits: torch.Tensor, tau: float, top_k: int | None) -> torch.Tensor:
    """softmax(logits / tau) over the last axis, restricted to the top_k largest logits (None: all)."""
    scaled = logits / tau
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.softmax(scaled, dim=-1)


class MoELoRALinear(AdapterLayer):
    """y = W x + b + sum_e gate_e(x) s B_e A_e dropout(x); see the module docstring."""

    mergeable = False
    merge_refusal = (
        "moe-lora routes each input through a learned softmax over task experts, so it cannot be "
        "folded into the base weights; keep the adapter (save_pretrained)"
    )

    def __init__(self, base_layer: nn.Linear, config: MoELoRAConfig) -> None:
        super().__init__(base_layer, config)
        self.tau = float(config.tau)
        self.top_k = config.top_k
        self.router_init_std = float(config.router_init_std)
        self.train_old_router_rows = config.train_old_router_rows
        self.experts_A = nn.ParameterList()
        self.experts_B = nn.ParameterList()
        self.router = nn.ParameterList()  # row e: (1, d_in)

    @property
    def num_experts(self) -> int:
        return len(self.experts_A)

    def has_delta(self) -> bool:
        return self.num_experts > 0

    def router_weight(self) -> torch.Tensor:
        """W_r, (E, d_in)."""
        return torch.cat(list(self.router), dim=0)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """gate(x), (..., E); the router reads x itself (no dropout)."""
        return gates(F.linear(x.to(self.router[0].dtype), self.router_weight()), self.tau, self.top_k)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate(x)
        h = self.dropout(x).to(self.experts_A[0].dtype)
        out = None
        for e in range(self.num_experts):
            term = F.linear(F.linear(h, self.experts_A[e]), self.experts_B[e]) * (g[..., e : e + 1] * self.scaling)
            out = term if out is None else out + term
        return out

    def _set_trainable(self) -> None:
        last = self.num_experts - 1
        for e in range(self.num_experts):
            current = self.task_active and e == last
            self.experts_A[e].requires_grad_(current)
            self.experts_B[e].requires_grad_(current)
            self.router[e].requires_grad_(current or (self.task_active and self.train_old_router_rows))

    def begin_task(self) -> None:
        super().begin_task()
        like = self._factor_like()
        self.experts_A.append(nn.Parameter(kaiming_rows(self.r, self.in_features, like)))
        self.experts_B.append(
            nn.Parameter(torch.zeros(self.out_features, self.r, dtype=like.dtype, device=like.device))
        )
        row = torch.zeros(1, self.in_features, dtype=like.dtype, device=like.device)
        if self.router_init_std > 0:
            row.normal_(0.0, self.router_init_std)
        self.router.append(nn.Parameter(row))
        self._set_trainable()

    def end_task(self) -> None:
        super().end_task()
        self._set_trainable()

    def apply_inference_options(self, config: MoELoRAConfig) -> None:
        self.tau = float(config.tau)
        self.top_k = config.top_k

    # -- persistence -------------------------------------------------------------------------------
    def adapter_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta, tensors = super().adapter_state()
        meta["experts"] = self.num_experts
        for e in range(self.num_experts):
            tensors[f"expert.{e}.A"] = self.experts_A[e]
            tensors[f"expert.{e}.B"] = self.experts_B[e]
            tensors[f"router.{e}"] = self.router[e]
        return meta, tensors

    def check_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().check_adapter_state(meta, tensors)
        active = meta_bool(meta, "task_active")
        n = meta_int(meta, "experts")
        if active and n == 0:
            raise AdapterStateError("field", "experts", "0 is invalid while a task is active: expected >= 1")
        for e in range(n):
            expect_tensor(tensors, f"expert.{e}.A", (self.r, self.in_features))
            expect_tensor(tensors, f"expert.{e}.B", (self.out_features, self.r))
            expect_tensor(tensors, f"router.{e}", (1, self.in_features))

    def load_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_adapter_state(meta, tensors)
        device = self._factor_like().device
        self.experts_A, self.experts_B, self.router = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for e in range(int(meta["experts"])):
            self.experts_A.append(nn.Parameter(tensors[f"expert.{e}.A"].detach().to(device).clone()))
            self.experts_B.append(nn.Parameter(tensors[f"expert.{e}.B"].detach().to(device).clone()))
            self.router.append(nn.Parameter(tensors[f"router.{e}"].detach().to(device).clone()))
        self.task_active = bool(meta["task_active"])
        self._set_trainable()

    def report(self) -> dict[str, Any]:
        return {**super().report(), "r": self.r, "experts": self.num_experts}

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, experts={self.num_experts}, tau={self.tau:g}, top_k={self.top_k}"
