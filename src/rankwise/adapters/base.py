"""What every rank-level adapter shares: its config fields and the layer that wraps an nn.Linear.

A layer keeps the frozen `base_layer` and adds a task-dependent low-rank term:

    y = base_layer(x) + delta(x)

Each method defines `delta` and what happens at `begin_task` / `end_task`. Methods that merge
(CoDyRA, LoRA with ``merge_on_task_end``) keep the merged per-task factors (A_t, B_t) so the history
can be saved as a few MB of adapter files and exported as a delta from the pre-trained weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn

from rankwise.adapters.presets import TARGET_PRESETS
from rankwise.adapters.state_checks import (  # noqa: F401  (re-exported: the layers import them from here)
    AdapterStateError,
    expect_tensor,
    meta_bool,
    meta_int,
    meta_int_list,
    short_repr,
)
from rankwise.errors import ConfigError, LifecycleError


@dataclass(frozen=True)
class LayerMemory:
    """One adapted layer's memory (`AdapterConfig.layer_memory`): `trainable` elements (each also has
    a gradient and two Adam moments of the same size), `kept_bytes` of frozen state that lives for
    the rest of the run, and `peak_extra_bytes` that may exist at some point (an upper bound, e.g.
    InfLoRA's input covariance during its collection pass, or its subspace memory at full rank)."""

    trainable: int
    kept_bytes: int = 0
    peak_extra_bytes: int = 0


@dataclass
class AdapterConfig:
    """Fields shared by every adapter method (peft's vocabulary)."""

    method: ClassVar[str] = ""
    #: fields that may change on a trained or loaded model (`RankwiseModel.set_inference_options`)
    inference_options: ClassVar[tuple[str, ...]] = ()
    #: whether every task's adapter is kept, unmerged, for the rest of the run (memory estimates count
    #: T copies; MoRAM's bank)
    bank_grows_per_task: ClassVar[bool] = False

    r: int = field(default=16, metadata={"help": "rank of each task's adapter (atoms per task for MoRAM)"})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "scaling numerator: scaling = lora_alpha / r; None means scaling 1"}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "module names (a name matches itself or any name ending in '.name') or one regex "
            "matched against full module names; None uses `preset`"
        },
    )
    preset: str | None = field(
        default=None, metadata={
            "help": "named target-module preset: open_clip, hf_clip, bert, llama, toy; None with no "
            "target_modules: the backbone's own (filled in when the run builds the model)"
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "names or a regex of modules never to adapt (e.g. one tower)"}
    )
    keep_optimizer: bool | None = field(
        default=None,
        metadata={
            "help": "True: one optimizer for the whole task sequence, its state (Adam moments, step count) "
            "carried from task to task onto the next task's fresh factors, as official TRACE "
            "training/main.py does; False: a fresh optimizer per task (official CoDyRA and X-TAIL); "
            "None: False, or what MoRAM's `compat` picks"
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "modules trained in full next to the adapters and saved with them, e.g. a new "
            "classification head: ['classifier'] (BERT), ['score'] (LLaMA); a name matches itself or any "
            "name ending in '.name'"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError("r", self.r, "an integer >= 1")
        if self.lora_alpha is not None and (
            not isinstance(self.lora_alpha, (int, float))
            or not math.isfinite(self.lora_alpha)
            or self.lora_alpha <= 0
        ):
            raise ConfigError("lora_alpha", self.lora_alpha, "a positive number or None (scaling 1)")
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", self.lora_dropout, "a number in [0, 1)")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            if isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ConfigError(name, value, f"a valid regular expression ({exc})") from exc
            elif value is not None and (
                not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value)
            ):
                raise ConfigError(name, value, "a non-empty list of module names, a regex string, or None")
        if isinstance(self.modules_to_save, tuple):
            self.modules_to_save = list(self.modules_to_save)
        if self.modules_to_save is not None and (
            not isinstance(self.modules_to_save, list)
            or not self.modules_to_save
            or not all(isinstance(v, str) and v for v in self.modules_to_save)
        ):
            raise ConfigError("modules_to_save", self.modules_to_save, "a non-empty list of module names, or None")
        if self.keep_optimizer is None:
            self.keep_optimizer = False
        if not isinstance(self.keep_optimizer, bool):
            raise ConfigError("keep_optimizer", self.keep_optimizer, "true, false or None")
        if self.preset is not None and self.preset not in TARGET_PRESETS:
            raise ConfigError("preset", self.preset, "one of " + ", ".join(sorted(TARGET_PRESETS)))

    def with_default_preset(self, preset: str) -> AdapterConfig:
        """This config, or a copy with ``preset`` set when neither `preset` nor `target_modules` is given
        (the engine fills in the backbone's own preset this way, once, when it builds the model)."""
        if self.preset is not None or self.target_modules is not None:
            return self
        return replace(self, preset=preset)

    @property
    def scaling(self) -> float:
        return 1.0 if self.lora_alpha is None else float(self.lora_alpha) / self.r

    def layer_memory(self, in_features: int, out_features: int, earlier_tasks: int, element: int) -> LayerMemory:
        """Memory of this method on one adapted (in_features -> out_features) linear while it trains
        the task after `earlier_tasks` others, with weights of `element` bytes (memory estimates,
        engine/memory.py and engine/memory_plan.py). The default: a fresh (A, B) per task,
        ``r (in + out)`` trainable elements; with `bank_grows_per_task` every earlier task's pair kept.
        A method file overrides it when its state differs (InfLoRA's subspace memory, O-LoRA's A_i)."""
        per_task = self.r * (in_features + out_features)
        kept = per_task * earlier_tasks * element if self.bank_grows_per_task else 0
        return LayerMemory(trainable=per_task, kept_bytes=kept)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` this process holds: a sharded parameter's (FSDP2 DTensor) local shard, else `t`.
    Elementwise in-place updates outside forward (CoDyRA's prox step) run on it."""
    return t.to_local() if hasattr(t, "to_local") else t


def whole(t: torch.Tensor) -> torch.Tensor:
    """`t` whole: a sharded parameter gathered from every process (a collective), else `t` itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def kaiming_rows(rows: int, in_features: int, like: torch.Tensor) -> torch.Tensor:
    """An (rows, in_features) matrix initialised like nn.Linear: kaiming-uniform with a = sqrt(5)."""
    weight = torch.empty(rows, in_features, dtype=like.dtype, device=like.device)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


class AdapterLayer(nn.Module):
    """Wraps a frozen nn.Linear; subclasses add ``delta(x)`` and the task lifecycle.

    Hooks a method overrides (all optional except `delta`; see docs/CONTRACT.md, "Adding a method"):

    * per layer: `begin_task`, `end_task`, `merge_current`, `adapter_state` / `check_adapter_state` /
      `load_adapter_state`, `report`, `apply_inference_options`, `extra_loss`, `collect_task_inputs`,
      `reset_activation_stats` / `combine_activation_stats`;
    * per model, on the class: `model_step` (after every optimizer step, over all layers of the model),
      `step_report` (logged with each logged step);
    * class attributes: `mergeable` (merge_and_unload may fold it into W), `merge_refusal` (why not),
      `records_activations` (counts routing in eval, see `RankwiseModel.track_activations`),
      `needs_task_inputs` / `needs_task_inputs_at_end` (a feature-collection pass over the task's
      training inputs before begin_task / before end_task, see `RankwiseModel.collecting_task_inputs`).
    """

    #: whether `merge_current` folds the adapter into the base weight exactly (merge_and_unload allowed)
    mergeable: ClassVar[bool] = False
    #: the error `RankwiseModel.merge_and_unload` raises when `mergeable` is False
    merge_refusal: ClassVar[str] = "this adapter cannot be folded into the base weights; keep it (save_pretrained)"
    #: whether the layer counts, in eval mode, how often its parts are used (MoRAM's atoms)
    records_activations: ClassVar[bool] = False
    #: whether the method needs the task's input features before `begin_task` (e.g. InfLoRA)
    needs_task_inputs: ClassVar[bool] = False
    #: whether it also needs them once more just before `end_task`, with the trained adapter live
    #: (e.g. InfLoRA's memory of earlier tasks' input subspace); `task_active` tells the two passes apart
    needs_task_inputs_at_end: ClassVar[bool] = False

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.r = config.r
        self.scaling = config.scaling
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.task_active = False
        self.merged_tasks = 0
        for p in base_layer.parameters():
            p.requires_grad_(False)
        # bitsandbytes' 4-bit layer on an AVX512-BF16 CPU repacks its weight for an inference kernel at the
        # first eval call and keeps that kernel in training, where it has no backward: keep the other one
        if getattr(base_layer, "support_avx512bf16_for_cpu", False):
            base_layer.support_avx512bf16_for_cpu = False

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (models such as open_clip read ``layer.weight.dtype``)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A strided input (e.g. attention's transposed (L, B, E)) with a frozen weight makes torch.matmul
        # broadcast the weight into a slow batched matmul at inference; one copy here avoids it.
        x = x if x.is_contiguous() else x.contiguous()
        shape = (*x.shape[:-1], self.out_features)
        # (N, d_out), a fresh tensor, not a view (see below). The base and the adapter read x through
        # views of their own, so their input gradients reach x separately, in the same order (and the
        # same float sums) as when each took x itself
        out = self.base_output(x.reshape(-1, self.in_features))
        if not self.has_delta():
            return out.view(shape)
        x = x.reshape(-1, self.in_features)
        h = self.low_rank_input(x)
        if h is None:
            return (out + self.delta(x).to(out.dtype)).view(shape)
        if h.dtype != out.dtype or self.lora_B.dtype != out.dtype:
            # e.g. under autocast: in-place addmm_ is not autocast, so use the out-of-place sum. Reuse h
            # (delta = h B^T): recomputing it would draw the dropout mask a second time.
            return (out + nn.functional.linear(h, self.lora_B).to(out.dtype)).view(shape)
        # out += h B^T inside the matmul, in place: the base output is fresh and its backward does not
        # need it, so no copy of the (N, d_out) output and no separate addition pass. It must be the
        # 2-D output itself: an in-place op on a view of it (out.reshape(-1, d) of a 3-D output)
        # makes autograd copy the whole gradient through CopySlices / AsStrided in backward.
        return out.addmm_(h, self.lora_B.t()).view(shape)

    def has_delta(self) -> bool:
        return self.task_active

    @property
    def base_is_quantized(self) -> bool:
        """Whether the base weight is stored quantized: bitsandbytes int8 / 4-bit (no floating dtype), or
        a tensor subclass such as torchao's (a float dtype over int8 storage, no in-place add).
        Nothing can be merged into it: merged tasks stay factors that `base_output` adds."""
        weight = self.base_layer.weight
        return not weight.dtype.is_floating_point or type(weight) not in (nn.Parameter, torch.Tensor)

    def base_output(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer's output: ``base_layer(x)``, plus, over a quantized base, the tasks merged
        so far (sum_i (x A_i^T) B_i^T in the factors' dtype: the W + sum B_i A_i of a float base)."""
        out = self.base_layer(x)
        if self.merged_tasks and self.base_is_quantized:
            flat = x.reshape(-1, self.in_features)
            for A, B in self.merged_history():
                out = out + ((flat.to(A.dtype) @ A.t()) @ B.t()).to(out.dtype).view(out.shape)
        return out

    def delta(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def low_rank_input(self, x: torch.Tensor) -> torch.Tensor | None:
        """For a factorised delta = h lora_B^T: h (..., r) with every scale folded in; else None."""
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    def begin_task(self) -> None:
        if self.task_active:
            raise LifecycleError("begin_task() called while a task is active; call end_task() first")
        self.task_active = True

    def end_task(self) -> None:
        if not self.task_active:
            raise LifecycleError("end_task() called with no active task; call begin_task(name) first")
        self.task_active = False

    @classmethod
    def model_step(
        cls, layers: list[AdapterLayer], config: AdapterConfig, iteration: int, total_iterations: int
    ) -> dict[str, Any]:
        """After every optimizer step (1-based `iteration` of `total_iterations` in this task), called once
        with every adapted layer of the model; returns what is logged with the step. Default: nothing, {}."""
        return {}

    @classmethod
    def step_report(cls, layers: list[AdapterLayer]) -> dict[str, Any]:
        """A summary over every adapted layer, logged with each logged training step (every
        ``train.log_every``, so it may cost a device sync). Default: nothing, {}."""
        return {}

    def extra_loss(self) -> torch.Tensor | None:
        """A regulariser this layer adds to the task loss at every step (e.g. O-LoRA's orthogonality
        penalty); `RankwiseModel.extra_loss` sums it over layers. Default None: nothing is added."""
        return None

    def collect_task_inputs(self, x: torch.Tensor) -> None:
        """Receives this layer's inputs x (..., d_in), detached, during a feature-collection pass over
        the task's training data (`RankwiseModel.collecting_task_inputs`): before `begin_task` when
        `needs_task_inputs` (``task_active`` False; e.g. InfLoRA designs A from them), before `end_task`
        when `needs_task_inputs_at_end` (``task_active`` True). Default: ignores them."""

    def apply_inference_options(self, config: AdapterConfig) -> None:
        """Take the config's `inference_options` (changed by `RankwiseModel.set_inference_options`)."""

    def reset_activation_stats(self) -> None:
        """Start counting activations afresh (layers with `records_activations`)."""

    def combine_activation_stats(self, sum_over_processes: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """After a sharded evaluation, replace the counts by their sums over processes (layers with
        `records_activations`; ``sum_over_processes(t)`` is the elementwise sum of every process's t)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            p for name, p in self.named_parameters() if not name.startswith("base_layer.") and p.requires_grad
        ]

    def _factor_like(self) -> torch.Tensor:
        """A tensor whose dtype and device new factors take: the base weight, or for a quantized base
        an empty tensor of its compute dtype (bitsandbytes' ``compute_dtype``; a tensor subclass's float
        dtype; else float32, e.g. bitsandbytes int8, whose bfloat16 inputs the factors then cast)."""
        weight = self.base_layer.weight
        if not self.base_is_quantized:
            return weight
        dtype = getattr(self.base_layer, "compute_dtype", None) or (
            weight.dtype if weight.dtype.is_floating_point else torch.float32
        )
        return torch.empty(0, dtype=dtype, device=weight.device)

    # -- merged history (methods that merge after each task) -------------------------------------
    def merge_factors(self, A: torch.Tensor, B: torch.Tensor) -> None:
        """W <- W + B A, recorded as task `merged_tasks` so the history can be saved and replayed.

        The product is computed in float32 and added in the weight's dtype. Loading replays exactly
        these operations in the same order, so a reloaded model is bit-identical.
        """
        weight = self.base_layer.weight
        A = A.detach().to(weight.device)
        B = B.detach().to(weight.device)
        if not self.base_is_quantized:  # a quantized base keeps the delta as factors (`base_output`)
            with torch.no_grad():
                weight.add_((B.float() @ A.float()).to(weight.dtype))
        index = self.merged_tasks
        self.register_buffer(f"merged_A_{index}", A.clone(), persistent=False)
        self.register_buffer(f"merged_B_{index}", B.clone(), persistent=False)
        self.merged_tasks += 1

    def merged_history(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (getattr(self, f"merged_A_{i}"), getattr(self, f"merged_B_{i}")) for i in range(self.merged_tasks)
        ]

    # -- persistence -------------------------------------------------------------------------------
    def adapter_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON metadata, tensors) that `load_adapter_state` turns back into this exact layer."""
        tensors: dict[str, torch.Tensor] = {}
        for i, (A, B) in enumerate(self.merged_history()):
            tensors[f"merged.{i}.A"] = A
            tensors[f"merged.{i}.B"] = B
        meta = {"merged_tasks": self.merged_tasks, "task_active": self.task_active}
        return meta, tensors

    def check_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Raise AdapterStateError naming the field or tensor unless `load_adapter_state` can load
        (meta, tensors) into this layer; changes nothing. Subclasses extend it."""
        meta_bool(meta, "task_active")
        for i in range(meta_int(meta, "merged_tasks")):
            A = expect_tensor(tensors, f"merged.{i}.A", (None, self.in_features))
            expect_tensor(tensors, f"merged.{i}.B", (self.out_features, A.shape[0]))

    def load_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        for i in range(int(meta["merged_tasks"])):
            self.merge_factors(tensors[f"merged.{i}.A"], tensors[f"merged.{i}.B"])

    def report(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features}

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged_tasks={self.merged_tasks}"
