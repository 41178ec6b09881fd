"""Building what a run config describes: tasks, backbone, adapters (fresh or from a task checkpoint).

`build_base` also applies ``threads``, picks the device (``cuda:<LOCAL_RANK>`` under torchrun) and
joins the process group when launched with several processes (see distributed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rankwise import io
from rankwise.config import ADAPTER_METHODS, RunConfig, resolve_method
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import distributed as ddp
from rankwise.engine import memory
from rankwise.engine.device import apply_threads, choose_device, seed_everything
from rankwise.engine.evaluate import validate_tasks
from rankwise.errors import CheckpointError, ConfigError
from rankwise.registry import BACKBONES, SCENARIOS
from rankwise.tasks import Task


@dataclass
class Parts:
    """Everything built from a config: tasks, backbone and the (possibly wrapped) model."""

    tasks: list[Task]
    backbone: Any
    model: torch.nn.Module
    device: torch.device
    dist: ddp.DistContext = ddp.SINGLE


# -- building ---------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: Path, index: int, task: Task) -> Path:
    """``checkpoints/task_<i>_<name>``, a safe folder name even for a task named ``x/../..``, proven inside."""
    from rankwise.engine.rundir import inside, task_folder_name

    return inside(run_dir, run_dir / "checkpoints" / task_folder_name(index, task.name))


def build_base(config: RunConfig) -> Parts:
    """Seed, build and validate the tasks, build the backbone; no method attached yet.

    Applies ``config.threads`` and, under a multi-process launcher, joins the process group.
    """
    apply_threads(config.threads)
    env = ddp.detect()
    device = choose_device(config.device, env.local_rank if env.enabled else None)
    dist = ddp.init_distributed(device)
    ddp.check_batch(config.train.batch_size, dist)
    seed_everything(config.seed)
    tasks = SCENARIOS[config.scenario.name].load_factory()(config.scenario.config, config.seed)
    validate_tasks(tasks)
    backbone = BACKBONES[config.backbone.name].load_factory()(config.backbone.config, device)
    if config.method.name in ADAPTER_METHODS:
        resolve_method(config.method, backbone.default_target_preset)
    per_rank = max(config.train.batch_size // max(dist.world_size, 1), 1)
    memory.check_batch_memory(backbone, tasks, per_rank, device)
    return Parts(tasks, backbone, backbone.model, device, dist)


def attach_method(parts: Parts, config: RunConfig, restore_from: Path | None = None) -> None:
    """Inject the adapters (or restore them from a task checkpoint); for `full`, restore the weights."""
    method = config.method.name
    if method in ADAPTER_METHODS:
        import rankwise

        adapter_config = config.method.config
        memory.check_adapter_memory(parts.backbone.model, adapter_config, len(parts.tasks), parts.device)
        try:
            if restore_from is not None:
                ckpt.verify_dir(restore_from)
                parts.model = rankwise.load_model(parts.backbone.model, restore_from)
            else:
                parts.model = rankwise.get_model(parts.backbone.model, adapter_config)
        except (MemoryError, RuntimeError) as exc:  # past the estimate: explain a failed allocation
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, MemoryError) and "alloc" not in text.lower() and "out of memory" not in text:
                raise
            raise ConfigError(
                "method.r", adapter_config.r, f"a rank whose adapters fit in memory (allocating them failed: {text})"
            ) from exc
    elif method == "full" and restore_from is not None:
        ckpt.verify_dir(restore_from)
        state = io.load_tensors(restore_from / "model.safetensors", device=parts.device)
        differ = set(parts.backbone.model.state_dict()) ^ set(state)
        if differ:
            raise CheckpointError(
                f"{restore_from} does not fit the model: keys differ, e.g. {sorted(differ)[:3]}"
            )
        ckpt.check_shapes(parts.backbone.model.state_dict(), state, restore_from / "model.safetensors")
        parts.backbone.model.load_state_dict(state)


def build_parts(config: RunConfig, restore_from: Path | None = None) -> Parts:
    """`build_base` + `attach_method`: everything a config describes, ready to train or evaluate."""
    parts = build_base(config)
    attach_method(parts, config, restore_from)
    return parts


def save_task_checkpoint(directory: Path, method: str, model: torch.nn.Module) -> None:
    def write(tmp: Path) -> None:
        if method in ADAPTER_METHODS:
            model.save_pretrained(tmp)
        else:
            seen: set[int] = set()
            tensors = {}
            for key, value in model.state_dict().items():
                ptr = value.untyped_storage().data_ptr()
                tensors[key] = value.clone() if ptr in seen else value  # safetensors refuses shared memory
                seen.add(ptr)
            io.save_tensors(tmp / "model.safetensors", tensors)

    ckpt.write_dir_atomically(directory, write)
