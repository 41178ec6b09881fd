"""What differs between run kinds, in one small object chosen once from the config.

    zero-shot   the backbone as it is: row 0 is evaluated and every later row equals it (no training)
    full        every backbone weight trains; a task checkpoint is the whole state dict
    adapter     (lora, codyra, moram, ...) only the adapters' tensors train; the method's lifecycle
                (begin_task -> after_optimizer_step per step -> end_task) runs around each task and a
                task checkpoint is the adapter folder (save_pretrained)

The loop in continual.py, build.py and export_run.py call the same hooks for every kind and never
test a method name; `strategy_for` is the one place that maps a ``method.name`` to its kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankwise import io
from rankwise.adapters import get_method, get_model, load_model, method_names
from rankwise.config import RUN_KINDS, RunConfig
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import distributed as ddp
from rankwise.engine import memory
from rankwise.errors import CheckpointError, ConfigError, choices
from rankwise.tasks import Task


class RunStrategy:
    """The whole model trains and is saved as one state dict (the base of the other kinds)."""

    trains = True  # False: nothing is trained, every row after the zero-shot one repeats it
    #: every trainable tensor takes part in every step's loss (False: DDP looks for unused ones, e.g. a
    #: backbone's pooler under full fine-tuning)
    all_trainables_in_loss = False

    def resolve(self, config: RunConfig, backbone: Any) -> None:
        """Fill in what the method section leaves to the backbone (on the engine's own config copy)."""

    def adapter_config(self, config: RunConfig, preset: str) -> Any:
        """The adapter config this run injects, its target preset defaulting to `preset`; None when
        the run kind injects no adapter (the memory plan counts every weight then)."""
        return None

    def attach(self, parts: Parts, config: RunConfig, restore_from: Path | None) -> None:
        """Make `parts.model` ready for the run; `restore_from` is a finished task's checkpoint."""
        if restore_from is not None:
            parts.model = self.restore(parts.backbone.model, restore_from, parts.device)

    def restore(self, base: torch.nn.Module, checkpoint: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The model after a finished task, from its (verified) checkpoint folder and the backbone's
        `base` model: here `base` itself with the saved state dict loaded (keys and shapes checked)."""
        ckpt.verify_dir(checkpoint)
        state = io.load_tensors(checkpoint / "model.safetensors", device=device)
        differ = set(base.state_dict()) ^ set(state)
        if differ:
            raise CheckpointError(f"{checkpoint} does not fit the model: keys differ, e.g. {sorted(differ)[:3]}")
        ckpt.check_shapes(base.state_dict(), state, checkpoint / "model.safetensors")
        base.load_state_dict(state)
        return base

    def check_export(self, method: str, to: str) -> None:
        """Refuse (ConfigError on ``--to``) a ``rankwise export`` format this run's checkpoints cannot
        give: a whole-model run exports only its weights, ``merged``."""
        if to != "merged":
            raise ConfigError("--to", to, f"'merged' for a {method!r} run (only adapter runs export adapters)")

    def begin_task(self, model: torch.nn.Module, name: str) -> None:
        """Called before a task's optimizer is built."""

    def collect_task_inputs(self, model: torch.nn.Module, backbone: Any, task: Any, batch_size: int) -> None:
        """Called just before `begin_task`: the feature-collection pass of methods that design their
        adapter from the task's inputs (`RankwiseModel.needs_task_inputs`, e.g. InfLoRA)."""

    def trainable(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The tensors this task's optimizer updates, by name."""
        for p in model.parameters():
            p.requires_grad_(True)
        return dict(model.named_parameters())

    def keeps_optimizer(self, model: torch.nn.Module) -> bool:
        """Whether the optimizer state runs on from one task to the next (official TRACE runner)."""
        return False

    def after_step(self, model: torch.nn.Module) -> Callable[[int, int], dict[str, Any]] | None:
        """Called as ``f(iteration, total)`` after every optimizer step; what it returns is logged with
        the step (``StepLog.extra``). None: nothing to call."""
        return None

    def step_report(self, model: torch.nn.Module) -> dict[str, Any]:
        """What else is logged with a logged step (only those, every ``train.log_every``): {} here."""
        return {}

    def end_task(self, model: torch.nn.Module, dist: ddp.DistContext) -> None:
        """Called after a task's last step, before its checkpoint is saved."""

    def save(self, directory: Path, model: torch.nn.Module) -> None:
        """Write a finished task's checkpoint into the (temporary) folder `directory`."""
        seen: set[int] = set()
        tensors = {}
        for key, value in model.state_dict().items():
            ptr = value.untyped_storage().data_ptr()
            tensors[key] = value.clone() if ptr in seen else value  # safetensors refuses shared memory
            seen.add(ptr)
        io.save_tensors(directory / "model.safetensors", tensors)

    def evaluate(
        self, model: torch.nn.Module, dist: ddp.DistContext, evaluate: Callable[[], list[float]]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        """The row after a task (from `evaluate`) and the per-layer report logged with it."""
        return evaluate(), None

    def set_inference_options(self, model: torch.nn.Module, method: str, options: dict[str, Any]) -> None:
        raise ConfigError("--set", options, f"inference options of an adapter method; this run is {method!r}")


class FullFineTuning(RunStrategy):
    """``method.name: full``."""

    def resolve(self, config: RunConfig, backbone: Any) -> None:
        """Refuse a quantized base (``backbone.quantize``): int8 / 4-bit weights cannot train."""
        stored = [n for n, p in backbone.model.named_parameters() if not p.dtype.is_floating_point]
        if stored:
            raise ConfigError(
                "method.name", "full", f"an adapter method: the base is quantized ({stored[0]}, ...), so its "
                "weights cannot train; or set backbone.quantize: none",
            )  # fmt: skip


class ZeroShot(RunStrategy):
    """``method.name: zero-shot``: evaluated once, never trained, never restored."""

    trains = False

    def attach(self, parts: Parts, config: RunConfig, restore_from: Path | None) -> None:
        return

    def check_export(self, method: str, to: str) -> None:
        raise ConfigError("--to", to, f"an export of a trained run; a {method!r} run trained nothing")


class AdapterMethod(RunStrategy):
    """An adapter method: the adapters are injected (or restored) and only their tensors train."""

    all_trainables_in_loss = True

    def resolve(self, config: RunConfig, backbone: Any) -> None:
        # the one place the backbone's default target preset is filled in (config.py leaves it open)
        config.method.config = self.adapter_config(config, backbone.default_target_preset)

    def adapter_config(self, config: RunConfig, preset: str) -> Any:
        return config.method.config.with_default_preset(preset)

    def attach(self, parts: Parts, config: RunConfig, restore_from: Path | None) -> None:
        adapter_config = config.method.config
        memory.check_adapter_memory(parts.backbone.model, adapter_config, len(parts.tasks), parts.device)
        try:
            if restore_from is not None:
                parts.model = self.restore(parts.backbone.model, restore_from, parts.device)
            else:
                parts.model = get_model(parts.backbone.model, adapter_config)
        except (MemoryError, RuntimeError) as exc:  # past the estimate: explain a failed allocation
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, MemoryError) and "alloc" not in text.lower() and "out of memory" not in text:
                raise
            raise ConfigError(
                "method.r", adapter_config.r, f"a rank whose adapters fit in memory (allocating them failed: {text})"
            ) from exc

    def restore(self, base: torch.nn.Module, checkpoint: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
        """`base` wrapped with the adapters of the checkpoint folder (`load_model`, all or nothing)."""
        ckpt.verify_dir(checkpoint)
        return load_model(base, checkpoint)

    def check_export(self, method: str, to: str) -> None:
        if to in ("peft", "merged") and not get_method(method).layer.mergeable:
            raise ConfigError("--to", to, f"'rankwise' for a {method!r} run: its output is routed per token, no fixed "
                              "weight delta, so it cannot become a peft LoRA or be merged")  # fmt: skip

    def begin_task(self, model: torch.nn.Module, name: str) -> None:
        model.begin_task(name)

    def collect_task_inputs(self, model: torch.nn.Module, backbone: Any, task: Any, batch_size: int) -> None:
        """Run the task's training inputs through the model (no_grad, eval mode) inside
        `collecting_task_inputs`, in their stored order (the same on every process and on resume, so a
        method that designs A from them designs the same A), `method.collect_batches` batches of
        `batch_size` (None: all). Methods without `needs_task_inputs`: nothing runs."""
        if not getattr(model, "needs_task_inputs", False):
            return
        limit = getattr(model.config, "collect_batches", None)
        starts = range(0, len(task.train), batch_size)
        was_training = model.training
        model.eval()
        with torch.no_grad(), model.collecting_task_inputs():
            for number, start in enumerate(starts):
                if limit is not None and number >= limit:
                    break
                examples = [task.train[i] for i in range(start, min(start + batch_size, len(task.train)))]
                backbone.loss(backbone.collate(examples, task, True), task)
        model.train(was_training)

    def trainable(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        wanted = {id(p) for p in model.trainable_parameters()}
        return {n: p for n, p in model.named_parameters() if id(p) in wanted}

    def keeps_optimizer(self, model: torch.nn.Module) -> bool:
        return bool(getattr(model.config, "keep_optimizer", False))

    def after_step(self, model: torch.nn.Module) -> Callable[[int, int], dict[str, Any]] | None:
        return model.after_optimizer_step  # CoDyRA: {"k": the prox threshold of this step}

    def step_report(self, model: torch.nn.Module) -> dict[str, Any]:
        # the method's own summary over all its layers (CoDyRA: {"surviving_ranks": live gates})
        return model.layer_class.step_report(list(model.adapter_layers().values()))

    def end_task(self, model: torch.nn.Module, dist: ddp.DistContext) -> None:
        model.end_task()
        # MoRAM fresh_atoms='end_task' draws the next task's atoms now: rank 0's on every rank
        ddp.broadcast_parameters(model.trainable_parameters(), dist)

    def save(self, directory: Path, model: torch.nn.Module) -> None:
        model.save_pretrained(directory)

    def evaluate(
        self, model: torch.nn.Module, dist: ddp.DistContext, evaluate: Callable[[], list[float]]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        with model.track_activations():  # MoRAM: how often each atom is routed to, summed over ranks
            row = evaluate()
            ddp.reduce_activation_stats(model, dist)
        return row, model.rank_report()

    def set_inference_options(self, model: torch.nn.Module, method: str, options: dict[str, Any]) -> None:
        model.set_inference_options(**options)


#: the run kinds that are no adapter method (config.RUN_KINDS); every method of the table is an AdapterMethod
KINDS: dict[str, type[RunStrategy]] = {"zero-shot": ZeroShot, "full": FullFineTuning}


def strategy_for(method: str) -> RunStrategy:
    """The strategy of ``method.name``: the one place the engine tells the run kinds apart."""
    if method in KINDS:
        return KINDS[method]()
    if method not in method_names():
        raise ConfigError("method.name", method, choices([*RUN_KINDS, *method_names()]))
    return AdapterMethod()


@dataclass
class Parts:
    """Everything built from a config (engine/build.py): tasks, backbone, the (possibly wrapped) model,
    and the run kind's strategy. Defined here, beside what a strategy attaches to, so that the
    strategies need nothing from build.py."""

    tasks: list[Task]
    backbone: Any
    model: torch.nn.Module
    device: torch.device
    dist: ddp.DistContext = ddp.SINGLE
    config: RunConfig | None = None  # the resolved copy of the config these parts were built from
    strategy: RunStrategy = field(default_factory=RunStrategy)  # what the run kind does
