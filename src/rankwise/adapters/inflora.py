"""InfLoRA (Liang & Li, CVPR 2024): A designed from the task's inputs, orthogonal to earlier tasks' input subspace.

Interference-Free Low-Rank Adaptation. Per layer, with U_M (d_in, k) an orthonormal basis of the input
subspace of earlier tasks (the GPM memory; k = 0 before the first task):

* before task t, a feature-collection pass (``needs_task_inputs``; the engine runs it over the task's
  training inputs, `collect_batches` batches) accumulates the input covariance
  ``C = (1/N) sum_n x_n x_n^T`` (float64);
* `begin_task` designs A from it: with P = I - U_M U_M^T,
  ``A = a_scale * (top-r eigenvectors of P C P)^T`` (rows orthonormal up to `a_scale`, so
  ``A U_M = 0`` up to float error: the new task's update B A cannot change the output on inputs
  of earlier tasks), B = 0; only B trains;
* the memory update (GPM, Saha et al. 2021, as the official `update_DualGPM` does it, on the
  covariance): with threshold ``eps_t = lamb + (lame - lamb) * t / threshold_tasks`` (t = 0, 1, ...
  tasks seen before), sigma_i the singular values of C, sigma_hat_i those of ``C_hat = C - U_M U_M^T C``
  and ``E = sum sigma_i^2``: first task (k = 0) keep ``max(1, #{j : sum_{i<=j} sigma_i^2 / E < eps_t})``
  top left singular vectors of C; later tasks start from the energy already covered,
  ``(E - sum sigma_hat_i^2) / E``, and add sigma_hat_i^2 / E of the next direction of C_hat while that
  is < eps_t; the added directions are projected out of U_M once more and orthonormalised (QR),
  keeping at most d_in columns;
* `end_task` merges ``W <- W + scaling * B A`` and the memory becomes the updated one.

Defaults as the official code (liangyanshuo/InfLoRA, methods/inflora.py, configs/cifar100_inflora.json):
r = 10, lamb = 0.95, lame = 1.0, A = U[:, :r]^T / sqrt(3) (a_scale = 1/sqrt(3)), no lora_alpha scaling
(scaling 1), collection over the whole training set (collect_batches None).

Simplifications versus the official code, documented:

* the memory is the plain GPM basis U_M. Official DualGPM switches a layer to the dual representation
  (keep the complement, ``project_type == 'retain'``) once k >= d_in / 2; the projector ``I - U_M U_M^T``
  is the same subspace either way, only the storage differs, so A and the memory are unchanged up to
  float error (the dual form saves memory when k is large);
* the official code designs A from the left singular vectors of ``(I - U_M U_M^T) C``; we use the
  eigenvectors of the symmetric ``P C P``, which have the same orthogonality (A U_M = 0) and span the
  top of the same projected input energy;
* the memory is updated from the covariance collected before the task (the official code collects
  the inputs a second time after training); this needs one collection pass per task, not two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rankwise.adapters.base import AdapterStateError, LayerMemory, expect_tensor, meta_int
from rankwise.adapters.lora import LoRAConfig, LoRALinear
from rankwise.errors import ConfigError, LifecycleError


@dataclass
class InfLoRAConfig(LoRAConfig):
    """InfLoRA: A from the task's projected input covariance, only B trains, merged after every task."""

    method = "inflora"

    r: int = field(default=10, metadata={"help": "rank of each task's adapter (official: 10)"})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "scaling = lora_alpha / r; None: scaling 1 (official: no scaling)"}
    )
    merge_on_task_end: bool = field(
        default=True, metadata={"help": "always true for InfLoRA: B A is merged into W after every task"}
    )
    lamb: float = field(
        default=0.95, metadata={"help": "energy threshold of the memory at the first task, in (0, 1] (official 0.95)"}
    )
    lame: float = field(
        default=1.0, metadata={"help": "energy threshold reached after threshold_tasks tasks, in [lamb, 1] (official 1.0)"}
    )
    threshold_tasks: int = field(
        default=10,
        metadata={"help": "tasks over which the threshold grows from lamb to lame (official: total_sessions)"},
    )
    a_scale: float = field(
        default=1.0 / math.sqrt(3.0), metadata={"help": "A = a_scale * eigenvectors^T (official 1/sqrt(3))"}
    )
    collect_batches: int | None = field(
        default=None,
        metadata={"help": "training batches the engine's collection pass runs per task; None: all (official)"},
    )

    def layer_memory(self, in_features: int, out_features: int, earlier_tasks: int, element: int) -> LayerMemory:
        """Only B (out x r) trains; A (r x in) is a fixed buffer; each merged task's (A_i, B_i) is kept
        (merge history). Up to: the float64 input covariance (in x in) of the collection pass plus the
        subspace memory (in x k, k <= in; at most in x in)."""
        return LayerMemory(
            trainable=self.r * out_features,
            kept_bytes=(self.r * in_features + earlier_tasks * self.r * (in_features + out_features)) * element,
            peak_extra_bytes=2 * in_features * in_features * 8,
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge_on_task_end is not True:
            raise ConfigError("merge_on_task_end", self.merge_on_task_end, "true (InfLoRA merges after every task)")
        if not _number(self.lamb) or not 0.0 < self.lamb <= 1.0:
            raise ConfigError("lamb", self.lamb, "a number in (0, 1]")
        if not _number(self.lame) or not self.lamb <= self.lame <= 1.0:
            raise ConfigError("lame", self.lame, f"a number in [lamb={self.lamb:g}, 1]")
        if isinstance(self.threshold_tasks, bool) or not isinstance(self.threshold_tasks, int) or self.threshold_tasks < 1:
            raise ConfigError("threshold_tasks", self.threshold_tasks, "an integer >= 1")
        if isinstance(self.a_scale, bool) or not isinstance(self.a_scale, (int, float)) or not (
            math.isfinite(self.a_scale) and self.a_scale > 0
        ):
            raise ConfigError("a_scale", self.a_scale, "a positive number")
        if self.collect_batches is not None and (
            isinstance(self.collect_batches, bool) or not isinstance(self.collect_batches, int) or self.collect_batches < 1
        ):
            raise ConfigError("collect_batches", self.collect_batches, "an integer >= 1 or None (all batches)")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def energy_threshold(config: InfLoRAConfig, tasks_seen: int) -> float:
    """eps_t = lamb + (lame - lamb) * t / threshold_tasks (official `update_DualGPM`)."""
    return config.lamb + (config.lame - config.lamb) * tasks_seen / config.threshold_tasks


def grow_memory(memory: torch.Tensor, cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """The GPM energy rule: ``memory`` (d, k) orthonormal, ``cov`` (d, d) -> the new basis (d, k'), k' >= k."""
    d = cov.shape[0]
    U, S, _ = torch.linalg.svd(cov)
    total = float((S**2).sum())
    if total <= 0.0:
        return memory
    if memory.shape[1] == 0:
        ratio = torch.cumsum(S**2, 0) / total
        keep = max(int((ratio < threshold).sum()), 1)
        return U[:, :keep].clone()
    projected = cov - memory @ (memory.T @ cov)
    U_hat, S_hat, _ = torch.linalg.svd(projected)
    covered = (total - float((S_hat**2).sum())) / total
    keep = 0
    for value in (S_hat**2 / total).tolist():
        if covered >= threshold:
            break
        covered += value
        keep += 1
    if keep == 0:
        return memory
    new = U_hat[:, :keep]
    new = new - memory @ (memory.T @ new)  # remove what float error left in span(U_M)
    Q, _ = torch.linalg.qr(new)
    return torch.cat([memory, Q], dim=1)[:, :d]


class InfLoRALinear(LoRALinear):
    """y = W x + b + s * B (A x), A designed before the task (frozen), B trained, merged at end_task."""

    mergeable = True
    needs_task_inputs = True

    def __init__(self, base_layer: nn.Linear, config: InfLoRAConfig) -> None:
        super().__init__(base_layer, config)
        self.config = config
        self.tasks_seen = 0
        self.register_buffer("memory", torch.zeros(self.in_features, 0, dtype=torch.float64), persistent=False)
        self.register_buffer("memory_next", None, persistent=False)
        self._cov_sum: torch.Tensor | None = None
        self._cov_rows = 0

    def collect_task_inputs(self, x: torch.Tensor) -> None:
        """Accumulate sum x x^T (float64) over the collection pass before the task."""
        if self.task_active:
            return
        flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
        gram = flat.T @ flat
        self._cov_sum = gram if self._cov_sum is None else self._cov_sum + gram
        self._cov_rows += flat.shape[0]

    def project_out(self, matrix: torch.Tensor) -> torch.Tensor:
        """P M P with P = I - U_M U_M^T (M symmetric (d, d))."""
        U = self.memory.to(matrix)
        left = matrix - U @ (U.T @ matrix)
        return left - (left @ U) @ U.T

    def begin_task(self) -> None:
        if self._cov_sum is None:
            raise LifecycleError(
                "InfLoRA needs the task's inputs before begin_task: run them through the model inside "
                "RankwiseModel.collecting_task_inputs() first (the engine does it)"
            )
        cov = self._cov_sum / max(self._cov_rows, 1)
        self._cov_sum, self._cov_rows = None, 0
        projected = self.project_out(cov)
        _, vectors = torch.linalg.eigh((projected + projected.T) / 2)  # ascending eigenvalues
        top = vectors[:, -self.r :].flip(1)  # (d, r), largest first
        like = self._factor_like()
        self.task_active = True
        self.lora_A = nn.Parameter(
            (self.config.a_scale * top.T).to(device=like.device, dtype=like.dtype), requires_grad=False
        )
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, dtype=like.dtype, device=like.device))
        self.memory_next = grow_memory(self.memory, cov, energy_threshold(self.config, self.tasks_seen))

    def end_task(self) -> None:
        super().end_task()  # merges s * B A, drops the factors
        self.memory = self.memory_next
        self.memory_next = None
        self.tasks_seen += 1

    def adapter_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta, tensors = super().adapter_state()
        meta["tasks_seen"] = self.tasks_seen
        tensors["memory"] = self.memory
        if self.memory_next is not None:
            tensors["memory_next"] = self.memory_next
        return meta, tensors

    def check_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().check_adapter_state(meta, tensors)
        meta_int(meta, "tasks_seen")
        memory = expect_tensor(tensors, "memory", (self.in_features, None))
        if memory.shape[1] > self.in_features:
            raise AdapterStateError("tensor", "memory", f"has {memory.shape[1]} columns > d_in={self.in_features}")
        if meta.get("task_active"):
            expect_tensor(tensors, "memory_next", (self.in_features, None))

    def load_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().load_adapter_state(meta, tensors)
        if self.lora_A is not None:
            self.lora_A.requires_grad_(False)  # A is designed, never trained
        device = self._factor_like().device
        self.tasks_seen = int(meta["tasks_seen"])
        self.memory = tensors["memory"].to(device=device, dtype=torch.float64).clone()
        self.memory_next = (
            tensors["memory_next"].to(device=device, dtype=torch.float64).clone() if "memory_next" in tensors else None
        )

    def report(self) -> dict[str, Any]:
        return {**super().report(), "memory_rank": int(self.memory.shape[1])}
