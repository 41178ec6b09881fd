"""CoDyRA: dynamic rank-selective LoRA, merged into the weights after every task.

Per adapted layer and task:  y = W x + b + s * B (g * (A dropout(x)))   (s = 1 unless lora_alpha is set)
with A (r, d_in) kaiming-uniform(a = sqrt(5)), B (d_out, r) = 0 and the gate g (r,) ~ N(0, 1).
The L1 penalty on g is never added to the loss: after each optimizer step the caller runs a proximal
step on g (``after_optimizer_step``). Ranks whose gate reaches 0 die; at the end of the task they are
dropped and W <- W + B diag(g) A, so inference costs exactly what the base model costs.
"""

from __future__ import annotations

import math
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
    local_part,
    meta_int_list,
    whole,
)
from rankwise.errors import ConfigError

PROX_OPERATORS = ("reference", "soft")


@dataclass
class CoDyRAConfig(AdapterConfig):
    """CoDyRA (Lu et al., arXiv 2412.01004). Defaults follow the paper's X-TAIL setting."""

    method = "codyra"

    prox: str = field(
        default="reference",
        metadata={
            "help": "'reference': the reference code's sequential operator (dead zone |g| <= 2k, no lr factor); "
            "'soft': textbook soft threshold T_k(g) = 1(|g| > k)(g - sign(g) k)"
        },
    )
    dense_fraction: float = field(
        default=0.5,
        metadata={"help": "fraction of a task's iterations trained densely before the prox step starts"},
    )
    k_max: float = field(default=0.005, metadata={"help": "final proximal threshold k"})
    ramp_steps: int = field(
        default=50, metadata={"help": "number of values k climbs through, linspace(0, k_max)"}
    )

    def layer_memory(self, in_features: int, out_features: int, earlier_tasks: int, element: int) -> LayerMemory:
        """A fresh (A, B) and r gates per task, merged into W at the task's end; the merged factors of
        each earlier task are kept for replay (at most r ranks survive, so this is an upper bound)."""
        per_task = self.r * (in_features + out_features)
        return LayerMemory(trainable=per_task + self.r, kept_bytes=per_task * earlier_tasks * element)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prox not in PROX_OPERATORS:
            raise ConfigError("prox", self.prox, "one of " + ", ".join(repr(p) for p in PROX_OPERATORS))
        if not isinstance(self.dense_fraction, (int, float)) or not 0.0 <= self.dense_fraction < 1.0:
            raise ConfigError("dense_fraction", self.dense_fraction, "a number in [0, 1)")
        if not isinstance(self.k_max, (int, float)) or self.k_max < 0:
            raise ConfigError("k_max", self.k_max, "a number >= 0")
        if isinstance(self.ramp_steps, bool) or not isinstance(self.ramp_steps, int) or self.ramp_steps < 1:
            raise ConfigError("ramp_steps", self.ramp_steps, "an integer >= 1")


#: from this many iterations per task on, the threshold follows the reference train loop step for step
OFFICIAL_FROM = 100


def ramp_interval(total_iterations: int, dense_fraction: float = 0.5, ramp_steps: int = 50) -> int:
    """Iterations between two threshold advances in the reference loop: int((T - f T) // ramp_steps).

    0 when T - f T < ramp_steps (T < 100 with the defaults): the reference code then never advances
    its threshold and never prunes; rankwise uses its own ramp there (see `threshold_at`).
    """
    return int((total_iterations - dense_fraction * total_iterations) // ramp_steps)


def _ramp_value(index: int, k_max: float, ramp_steps: int) -> float:
    """linspace(0, k_max, ramp_steps)[index], with numpy's rounding: index * (k_max / (n - 1)), last = k_max."""
    if index >= ramp_steps - 1:
        return float(k_max)
    return index * (float(k_max) / (ramp_steps - 1))


def threshold_at(
    iteration: int,
    total_iterations: int,
    dense_fraction: float = 0.5,
    k_max: float = 0.005,
    ramp_steps: int = 50,
) -> float | None:
    """The proximal threshold k applied after optimizer step `iteration` (1-based) of `total_iterations`.

    None means no proximal step. With T = total_iterations, i = iteration - 1 (the reference loop's
    0-based index), D = dense_fraction * T and m = int((T - D) // ramp_steps) (`ramp_interval`):

    * m >= 1 and ramp_steps >= 2 (T >= 100 with the defaults): the reference CoDyRA loop (models/codyra.py, train_model).
      Before step i the threshold index j advances by one whenever i >= D and i % m == 0; after
      ``optimizer.step()`` the prox runs when i > D with k = linspace(0, k_max, ramp_steps)[min(j, ramp_steps - 1)]:

          k(i) = None                                    if i <= D
          k(i) = lambdas[min(#{c in [ceil(D), i] : c % m == 0}, ramp_steps - 1)]   otherwise

      T = 500: no prox through step 251, k = k_max / 49 from step 252, k = k_max from step 491;
      the thresholds sum to 0.650 (the total shrink of a gate that survives).
    * T < 100 (`OFFICIAL_FROM`), m = 0, or ramp_steps = 1 (rankwise choices; with its default 50
      ramp steps the reference never prunes below T = 100: its threshold never leaves 0, and
      linspace(0, k_max, 1) = [0]; short runs keep rankwise's ramp whatever ramp_steps is, so the
      published short CPU runs, e.g. text-mtil at T = 30, re-run bit for bit): dense through step int(D), then k climbs
      through linspace(0, k_max, ramp_steps) advancing every max(1, (T - int(D)) // ramp_steps) steps
      (k = k_max at once when ramp_steps = 1), so short smoke runs still prune.
    """
    interval = ramp_interval(total_iterations, dense_fraction, ramp_steps)
    if interval >= 1 and ramp_steps >= 2 and total_iterations >= OFFICIAL_FROM:
        i = iteration - 1
        dense = dense_fraction * total_iterations
        if i <= dense:
            return None
        # advances at every multiple of `interval` in [ceil(D), i]: floor(i/m) - floor((ceil(D) - 1)/m)
        advances = i // interval - (math.ceil(dense) - 1) // interval
        return _ramp_value(min(advances, ramp_steps - 1), k_max, ramp_steps)
    dense_iters = int(dense_fraction * total_iterations)
    if iteration <= dense_iters:
        return None
    interval = max(1, (total_iterations - dense_iters) // ramp_steps)
    step = min((iteration - dense_iters) // interval, ramp_steps - 1)
    if ramp_steps == 1:
        return float(k_max)
    return float(k_max) * step / (ramp_steps - 1)


@torch.no_grad()
def prox_reference(gate: torch.Tensor, k: float) -> None:
    """The reference code's operator, in place: three masked updates run in sequence.

    ``p[p > k] -= k; p[p < -k] += k; p[|p| < k] = 0`` - values in (k, 2k) are first shrunk below k and
    then zeroed, so the dead zone is |p| < 2k (not k), and k is not multiplied by the learning rate.
    Written with ``torch.where`` (the same subtractions, additions and zeros, so the same bits as the
    masked assignments) because a boolean-mask assignment reads the mask back to the host: on a GPU
    every gate of every layer would wait for the device at every step.
    """
    g = torch.where(gate > k, gate - k, gate)
    g = torch.where(g < -k, g + k, g)
    gate.copy_(g.masked_fill(g.abs() < k, 0))


@torch.no_grad()
def prox_soft(gate: torch.Tensor, k: float) -> None:
    """Textbook soft threshold, in place: g <- sign(g) max(|g| - k, 0)."""
    gate.copy_(torch.sign(gate) * torch.clamp(gate.abs() - k, min=0))


PROX = {"reference": prox_reference, "soft": prox_soft}


class CoDyRALinear(AdapterLayer):
    """y = W x + b + s * B (g * (A dropout(x))); ranks with g = 0 are dropped at merge time."""

    mergeable = True

    @classmethod
    def model_step(
        cls, layers: list[AdapterLayer], config: CoDyRAConfig, iteration: int, total_iterations: int
    ) -> dict[str, Any]:
        """The proximal gate step of every layer with k = `threshold_at(iteration, total)`, the threshold
        the reference train loop uses after ``optimizer.step()`` at its 0-based iteration
        ``iteration - 1``; returns ``{"k": k}`` (None: no prox this step)."""
        k = threshold_at(iteration, total_iterations, config.dense_fraction, config.k_max, config.ramp_steps)
        if k is not None:
            for layer in layers:
                layer.prox_step(k, config.prox)
        return {"k": k}

    @classmethod
    def step_report(cls, layers: list[AdapterLayer]) -> dict[str, Any]:
        """``{"surviving_ranks": sum over layers of the non-zero gates}`` of the current task (r per layer
        while dense; the prox steps zero gates as k ramps up)."""
        return {"surviving_ranks": sum(layer.surviving_ranks() for layer in layers)}

    def __init__(self, base_layer: nn.Linear, config: CoDyRAConfig) -> None:
        super().__init__(base_layer, config)
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.gate: nn.Parameter | None = None
        self.merged_ranks: list[int] = []

    def low_rank_input(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate * self.scaling if self.scaling != 1.0 else self.gate  # (r,): scale the small side
        return F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A) * gate

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.low_rank_input(x), self.lora_B)

    def begin_task(self) -> None:
        super().begin_task()
        like = self._factor_like()
        self.lora_A = nn.Parameter(kaiming_rows(self.r, self.in_features, like))
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, self.r, dtype=like.dtype, device=like.device)
        )
        self.gate = nn.Parameter(torch.randn(self.r, dtype=like.dtype, device=like.device))

    def prox_step(self, k: float, operator: str) -> None:
        if self.gate is not None:
            with torch.no_grad():  # on the parameter itself (not .data): bumps its version for caches
                PROX[operator](local_part(self.gate), k)  # elementwise: a shard under FSDP

    def surviving_ranks(self) -> int:
        return 0 if self.gate is None else int((whole(self.gate.detach()) != 0).sum())

    def end_task(self) -> None:
        super().end_task()
        self.merge_current()

    def merge_current(self) -> None:
        """Drop zero-gate ranks and fold B diag(g) A (times the scaling) into W."""
        if self.gate is None:
            return
        alive = self.gate.detach() != 0
        A = self.lora_A.detach()[alive]
        B = self.lora_B.detach()[:, alive] * (self.gate.detach()[alive] * self.scaling)
        self.merge_factors(A, B)
        self.merged_ranks.append(int(alive.sum()))
        self.lora_A = self.lora_B = self.gate = None
        self.task_active = False

    def adapter_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta, tensors = super().adapter_state()
        meta["merged_ranks"] = list(self.merged_ranks)
        if self.gate is not None:
            tensors.update(lora_A=self.lora_A, lora_B=self.lora_B, gate=self.gate)
        return meta, tensors

    def check_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().check_adapter_state(meta, tensors)
        meta_int_list(meta, "merged_ranks")
        if meta["task_active"]:
            expect_tensor(tensors, "lora_A", (self.r, self.in_features))
            expect_tensor(tensors, "lora_B", (self.out_features, self.r))
            expect_tensor(tensors, "gate", (self.r,))

    def load_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_adapter_state(meta, tensors)
        self.merged_ranks = [int(r) for r in meta["merged_ranks"]]
        if meta["task_active"]:
            device = self._factor_like().device
            self.lora_A = nn.Parameter(tensors["lora_A"].to(device))
            self.lora_B = nn.Parameter(tensors["lora_B"].to(device))
            self.gate = nn.Parameter(tensors["gate"].to(device))
            self.task_active = True

    def report(self) -> dict[str, Any]:
        return {
            **super().report(),
            "r": self.r,
            "merged_ranks": list(self.merged_ranks),
            "active_surviving_ranks": self.surviving_ranks() if self.gate is not None else None,
        }
