"""`get_model` / `load_model` and the wrapper that carries the continual-learning lifecycle.

model = get_model(base, CoDyRAConfig(preset="open_clip"))
for task in stream:
    model.begin_task(task.name)                      # fresh trainable factors
    ...train; after each optimizer.step():
    model.after_optimizer_step(iteration, total)     # CoDyRA's proximal gate step
    model.end_task()                                 # CoDyRA: prune + merge; MoRAM: freeze atoms
model.save_pretrained("adapters/")                   # adapter_config.json + adapter_model.safetensors
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankwise._version import __version__
from rankwise.adapters import adapter_files, saved_modules
from rankwise.adapters.adapter_files import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE  # noqa: F401
from rankwise.adapters.attention import SplitMultiheadAttention
from rankwise.adapters.base import AdapterConfig, AdapterLayer
from rankwise.adapters.forward import SignatureForward
from rankwise.adapters.inject import set_submodule, transaction
from rankwise.adapters.methods import CONFIG_CLASSES, get_method, method_names, method_of
from rankwise.adapters.restore import adapter_config_from_dict, check_payload, inject, read_folder, restore
from rankwise.errors import CheckpointError, ConfigError, LifecycleError, RankwiseError

__all__ = [
    "CONFIG_CLASSES", "RankwiseModel", "adapter_config_from_dict", "get_model", "load_model", "load_model_from_payload"
]  # fmt: skip


def get_model(model: nn.Module, config: AdapterConfig) -> RankwiseModel:
    """Freeze `model`, inject adapters in place where `config` targets, and wrap it.

    All or nothing: when it raises, `model` is exactly as it was (modules, values, requires_grad).
    """
    if not isinstance(config, AdapterConfig):
        names = ", ".join(get_method(m).config.__name__ for m in method_names())
        raise TypeError(f"config must be an adapter config ({names}), got {type(config).__name__}")
    method_of(config)  # a registered method, before the model is touched
    with transaction(model) as edit:
        inject(model, config, edit)
    return RankwiseModel(model, config)


class RankwiseModel(nn.Module):
    """A model with rank-level adapters; forwards exactly like the wrapped model."""

    def __init__(self, base_model: nn.Module, config: AdapterConfig) -> None:
        super().__init__()
        self.base_model = base_model
        self.config = config
        self.tasks: list[str] = []
        self.current_task: str | None = None
        self._unloaded = False
        self.layer_class = method_of(config).layer  # the method's hooks (adapters/methods.py)

    @property
    def mergeable(self) -> bool:
        """Whether `merge_and_unload` can fold this method's adapters into the base weights."""
        return self.layer_class.mergeable

    # -- plumbing --------------------------------------------------------------------------------
    def _plain_forward(self, *args: Any, **kwargs: Any) -> Any:
        self._check_usable()
        return self.base_model(*args, **kwargs)

    forward = SignatureForward()  # calls the wrapped model, with its signature (adapters/forward.py)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_model"), name)

    def adapter_layers(self) -> dict[str, AdapterLayer]:
        return {n: m for n, m in self.base_model.named_modules() if isinstance(m, AdapterLayer)}

    def saved_modules(self) -> dict[str, nn.Module]:
        """{name: module} of `AdapterConfig.modules_to_save`: trained in full, saved with the adapter."""
        return saved_modules.resolve(self.base_model, self.config.modules_to_save, self.adapter_layers())

    def _check_usable(self) -> None:
        if self._unloaded:
            raise LifecycleError("this wrapper was unloaded by merge_and_unload(); use the model it returned")

    # -- lifecycle -------------------------------------------------------------------------------
    def begin_task(self, name: str) -> None:
        """Start task `name`: create its trainable factors (a fresh adapter / fresh atoms)."""
        self._check_usable()
        if self.current_task is not None:
            raise LifecycleError(
                f"begin_task({name!r}) while task {self.current_task!r} is active; call end_task() first"
            )
        if not isinstance(name, str) or not name or name in self.tasks:
            raise LifecycleError(
                f"task name {name!r} must be a non-empty string not used before (seen: {self.tasks})"
            )
        for layer in self.adapter_layers().values():
            layer.begin_task()
        self.current_task = name

    def end_task(self) -> None:
        """Finish the current task (CoDyRA: drop dead ranks and merge; MoRAM: freeze atoms into the bank)."""
        self._check_usable()
        if self.current_task is None:
            raise LifecycleError("end_task() with no active task; call begin_task(name) first")
        for layer in self.adapter_layers().values():
            layer.end_task()
        self.tasks.append(self.current_task)
        self.current_task = None

    def after_optimizer_step(self, iteration: int, total_iterations: int) -> dict[str, Any]:
        """Call after every optimizer.step() with the 1-based step count of this task.

        Runs the method's `AdapterLayer.model_step` over every adapted layer and returns what it
        returns. CoDyRA: the proximal step on every gate with k = `threshold_at(iteration, total)`,
        returning ``{"k": k}`` (None: no prox this step). LoRA, MoRAM: no-op, {}.
        """
        if self.current_task is None:
            raise LifecycleError("after_optimizer_step() with no active task; call begin_task(name) first")
        if not 1 <= iteration <= total_iterations:
            raise ValueError(f"iteration={iteration} must be in [1, total_iterations={total_iterations}]")
        layers = list(self.adapter_layers().values())
        return self.layer_class.model_step(layers, self.config, iteration, total_iterations)

    def extra_loss(self) -> torch.Tensor | None:
        """The sum of every layer's `AdapterLayer.extra_loss` (a regulariser added to the task loss),
        or None when no layer adds one (LoRA, CoDyRA, MoRAM)."""
        total = None
        for layer in self.adapter_layers().values():
            loss = layer.extra_loss()
            if loss is not None:
                total = loss if total is None else total + loss
        return total

    @property
    def needs_task_inputs(self) -> bool:
        """Whether the method wants a feature-collection pass (`collecting_task_inputs`) over each
        task's training inputs before `begin_task`."""
        return self.layer_class.needs_task_inputs

    @property
    def needs_task_inputs_at_end(self) -> bool:
        """Whether the method wants such a pass once more just before `end_task`."""
        return self.layer_class.needs_task_inputs_at_end

    @contextmanager
    def collecting_task_inputs(self) -> Iterator[None]:
        """Inside, every forward hands each adapted layer its input x (detached) through
        `AdapterLayer.collect_task_inputs` before computing its output. The caller runs the task's
        training inputs through the model (no_grad, eval mode) inside: before `begin_task` when
        `needs_task_inputs`, before `end_task` when `needs_task_inputs_at_end`."""
        self._check_usable()

        def hand_over(layer: nn.Module, args: tuple, kwargs: dict) -> None:
            layer.collect_task_inputs((args[0] if args else next(iter(kwargs.values()))).detach())

        handles = [
            layer.register_forward_pre_hook(hand_over, with_kwargs=True) for layer in self.adapter_layers().values()
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def set_inference_options(self, **options: Any) -> None:
        """Change the method's `AdapterConfig.inference_options` on a trained or loaded model, e.g. to
        sweep MoRAM's ``delta`` at evaluation.

        MoRAM: ``top_k`` (int >= 1, or None = r), ``tau`` (> 0) and ``delta`` (in [-1, 1]; <= 0 switches
        pruning off), as the official inference scripts set them (TRACE/inference/infer_part.py:
        --moram_topk, --moram_router_temp, --moram_infer_lora_a_thresh). The values replace the config's
        in ``self.config`` (so a later ``save_pretrained`` stores them) and reach every layer through
        `AdapterLayer.apply_inference_options`. Invalid values, or an option this method does not have,
        raise ConfigError and change nothing.
        """
        allowed = type(self.config).inference_options
        if not allowed or not set(options) <= set(allowed):
            name = next((k for k in options if k not in allowed), "inference_options")
            owners = [f"{m} ({', '.join(get_method(m).config.inference_options)})" for m in method_names()
                      if get_method(m).config.inference_options]  # fmt: skip
            raise ConfigError(
                name, options.get(name, options),
                f"an inference option of this model's method {self.config.method!r}: "
                + (", ".join(allowed) if allowed else "it has none; methods with some: " + "; ".join(owners)),
            )  # fmt: skip
        config = dataclasses.replace(self.config, **options)  # __post_init__ validates
        self.config = config
        for layer in self.adapter_layers().values():
            layer.apply_inference_options(config)

    # -- parameters and reports -----------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapters' trainable factors, then the parameters of `saved_modules` (e.g. a head)."""
        params = [p for layer in self.adapter_layers().values() for p in layer.trainable_parameters()]
        seen = {id(p) for p in params}
        for module in self.saved_modules().values():
            params += [p for p in module.parameters() if p.requires_grad and id(p) not in seen and not seen.add(id(p))]
        return params

    def count_untrained(self, optimizers: Sequence[torch.optim.Optimizer]) -> int:
        """How many of `trainable_parameters` none of `optimizers` holds (an optimizer built before
        ``begin_task`` misses the task's new factors; the Trainer and Lightning integrations check it)."""
        held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
        return sum(id(p) not in held for p in self.trainable_parameters())

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.base_model.parameters())
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}"
        )

    def rank_report(self) -> list[dict[str, Any]]:
        """Per adapted layer: surviving ranks per task (CoDyRA), bank size and activation rates (MoRAM)."""
        return [{"layer": name, **layer.report()} for name, layer in self.adapter_layers().items()]

    @contextmanager
    def track_activations(self) -> Iterator[None]:
        """Count, in eval mode, how often the parts of every layer with `records_activations` are used
        (MoRAM: each atom getting non-zero weight; see rank_report)."""
        layers = [m for m in self.adapter_layers().values() if m.records_activations]
        for layer in layers:
            layer.reset_activation_stats()
            layer.track_activations = True
        try:
            yield
        finally:
            for layer in layers:
                layer.track_activations = False

    # -- merging ---------------------------------------------------------------------------------
    def merge_and_unload(self) -> nn.Module:
        """Fold every adapter into its base weight and return the plain model (methods whose layer is
        `mergeable`: LoRA, CoDyRA; the others raise RankwiseError with the layer's `merge_refusal`)."""
        self._check_usable()
        if not self.mergeable:
            raise RankwiseError(self.layer_class.merge_refusal)
        quantized = [n for n, layer in self.adapter_layers().items() if layer.base_is_quantized]
        if quantized:
            raise RankwiseError(
                f"layers {quantized[:3]} have a quantized base weight, which cannot take the merge; load the "
                "adapter onto a float copy of the base to merge it, or keep it (save_pretrained)"
            )
        for name, layer in self.adapter_layers().items():
            layer.merge_current()
            set_submodule(self.base_model, name, layer.base_layer)
        for name, module in list(self.base_model.named_modules()):
            if isinstance(module, SplitMultiheadAttention):
                set_submodule(self.base_model, name, module.to_fused())
        self._unloaded = True
        self.current_task = None
        return self.base_model

    # -- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write adapter_config.json, adapter_model.safetensors (atomically) and checksums.json
        (their SHA-256, verified by `load_model`) into `directory`."""
        header, tensors = self.adapter_payload()
        adapter_files.write_adapter_folder(Path(directory), header, tensors)
        return Path(directory)

    def adapter_payload(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What `save_pretrained` writes, in memory: (adapter_config.json's content, the tensors of
        adapter_model.safetensors); `load_model_from_payload` reads it back (Lightning checkpoints)."""
        self._check_usable()
        layers_meta: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in self.adapter_layers().items():
            meta, layer_tensors = layer.adapter_state()
            layers_meta[name] = meta
            tensors.update({f"{name}::{key}": t for key, t in layer_tensors.items()})
        modules_meta, module_tensors = saved_modules.state(self.saved_modules())
        tensors.update(module_tensors)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "peft_type": adapter_files.PEFT_TYPE_MARKER,  # peft refuses this folder with a clear message
            "rankwise_version": __version__,
            "config": self.config.to_dict(),
            "tasks": self.tasks,
            "current_task": self.current_task,
            "layers": layers_meta,
            "modules_to_save": modules_meta,
        }
        return header, tensors

    def load_adapter(self, directory: str | os.PathLike[str]) -> None:
        """Restore a folder written by `save_pretrained` into this model, in place: the model must be as
        `get_model` returned it (no task begun) and built with the same config (inference options may
        differ: the saved ones are taken). Resuming a run keeps the model object (an optimizer or a
        trainer holding it); `load_model` builds a new wrapper instead. Checks as `load_model`; a
        refusal changes nothing."""
        self._check_usable()
        fresh = all(not layer.task_active and not layer.merged_tasks for layer in self.adapter_layers().values())
        if self.tasks or self.current_task is not None or not fresh:
            raise LifecycleError(
                f"load_adapter() needs a model fresh from get_model (no task begun); this one has tasks "
                f"{self.tasks} and current task {self.current_task!r}; use load_model(fresh_base, folder)"
            )
        directory = Path(directory)
        saved, tensors, config = read_folder(directory)
        ours, theirs = self.config.to_dict(), config.to_dict()
        differs = [k for k in ours if k not in type(config).inference_options and ours[k] != theirs.get(k)]
        if differs:
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: field config.{differs[0]}={theirs.get(differs[0])!r} differs from "
                f"this model's {ours[differs[0]]!r}; build the model with the saved config, or use load_model"
            )
        with transaction(self.base_model) as edit:
            restore(directory, self.base_model, self.adapter_layers(), config, saved, tensors, edit)
        if config != self.config:
            self.set_inference_options(**{k: theirs[k] for k in type(config).inference_options})
        self.tasks = list(saved["tasks"])
        self.current_task = saved["current_task"]

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | os.PathLike[str]) -> RankwiseModel:
        """peft's spelling of `load_model`: ``RankwiseModel.from_pretrained(fresh_base, "adapters/")``."""
        return load_model(model, directory)


def load_model(model: nn.Module, directory: str | os.PathLike[str]) -> RankwiseModel:
    """Inject and restore a saved adapter (config, task history, merged factors, bank, live adapter,
    `modules_to_save`) into a fresh copy of the base model it was trained from.

    Everything is checked before `model` is touched: checksums.json (when present), the structure
    and types of adapter_config.json, every tensor finite, and every tensor's shape against the layer
    it belongs to. A refusal is a CheckpointError naming the file and the field or tensor, and leaves
    `model` exactly as it was; so does any later failure (the injection is rolled back and merged
    base weights are restored from a CPU copy taken before the merge).
    """
    directory = Path(directory)
    return _load_into(model, directory, *read_folder(directory))


def load_model_from_payload(
    model: nn.Module, header: dict[str, Any], tensors: dict[str, torch.Tensor], origin: str = "<memory>"
) -> RankwiseModel:
    """`load_model` from `RankwiseModel.adapter_payload()` kept in memory (same checks; `origin` names
    where it came from in error messages, e.g. a Lightning checkpoint file)."""
    directory = Path(origin)
    return _load_into(model, directory, *check_payload(directory, header, tensors))


def _load_into(
    model: nn.Module, directory: Path, saved: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]],
    config: AdapterConfig,
) -> RankwiseModel:  # fmt: skip
    with transaction(model) as edit:
        layers = inject(model, config, edit)
        restore(directory, model, layers, config, saved, tensors, edit)
    wrapped = RankwiseModel(model, config)
    wrapped.tasks = list(saved["tasks"])
    wrapped.current_task = saved["current_task"]
    return wrapped
