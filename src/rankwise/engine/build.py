"""Building what a run config describes: tasks, backbone, adapters (fresh or from a task checkpoint).

`build_base` also applies ``threads``, picks the device (``cuda:<LOCAL_RANK>`` under torchrun) and
joins the process group when launched with several processes (see distributed.py). It never changes
the config it is given: the method section is resolved (e.g. the backbone's default target preset)
on a copy, kept in ``Parts.config`` with the run kind's strategy (strategy.py) in ``Parts.strategy``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from rankwise.config import RunConfig
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import distributed as ddp
from rankwise.engine import memory
from rankwise.engine.device import apply_threads, choose_device, seed_everything
from rankwise.engine.evaluate import validate_tasks
from rankwise.engine.rundir import inside, task_folder_name
from rankwise.engine.strategy import Parts, strategy_for
from rankwise.errors import ConfigError
from rankwise.registry import BACKBONES, SCENARIOS
from rankwise.tasks import Task


# -- building ---------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: Path, index: int, task: Task) -> Path:
    """``checkpoints/task_<i>_<name>``, a safe folder name even for a task named ``x/../..``, proven inside."""
    return inside(run_dir, run_dir / "checkpoints" / task_folder_name(index, task.name))


def build_base(config: RunConfig) -> Parts:
    """Seed, build and validate the tasks, build the backbone; no method attached yet.

    Applies ``config.threads`` and, under a multi-process launcher, joins the process group.
    `config` itself is left as it is; the resolved copy is ``Parts.config``.
    """
    config = copy.deepcopy(config)
    if config.train.parallel == "fsdp" and getattr(config.backbone.config, "quantize", "none") != "none":
        raise ConfigError(
            "train.parallel", "fsdp",
            f"ddp with a quantized base (backbone.quantize: {config.backbone.config.quantize}): FSDP cannot "
            "shard bitsandbytes weights",
        )  # fmt: skip
    apply_threads(config.threads)
    env = ddp.detect()
    device = choose_device(config.device, env.local_rank if env.enabled else None)
    dist = ddp.init_distributed(device)
    ddp.check_batch(config.train.batch_size, dist)
    seed_everything(config.seed)
    tasks = SCENARIOS[config.scenario.name].load_factory()(config.scenario.config, config.seed)
    validate_tasks(tasks)
    backbone = BACKBONES[config.backbone.name].load_factory()(config.backbone.config, device)
    strategy = strategy_for(config.method.name)
    strategy.resolve(config, backbone)
    per_rank = max(config.train.batch_size // max(dist.world_size, 1), 1)
    memory.check_batch_memory(backbone, tasks, per_rank, device)
    return Parts(tasks, backbone, backbone.model, device, dist, config, strategy)


def attach_method(parts: Parts, config: RunConfig, restore_from: Path | None = None) -> None:
    """Inject the adapters (or restore them from a task checkpoint); for `full`, restore the weights.

    The method section comes from ``parts.config`` (resolved by `build_base`) when there is one.
    """
    resolved = parts.config if parts.config is not None else config
    parts.strategy.attach(parts, resolved, restore_from)
    if resolved.train.parallel == "fsdp" and parts.dist.enabled:  # before any work (fresh run or resume)
        from rankwise.engine.fsdp import check_supported

        check_supported(parts.model, resolved.method.name)


def build_parts(config: RunConfig, restore_from: Path | None = None) -> Parts:
    """`build_base` + `attach_method`: everything a config describes, ready to train or evaluate."""
    parts = build_base(config)
    attach_method(parts, config, restore_from)
    return parts


def save_task_checkpoint(directory: Path, method: str, model: torch.nn.Module) -> None:
    """Write a finished task's checkpoint of a `method` run into `directory` (atomically)."""
    ckpt.write_dir_atomically(directory, lambda tmp: strategy_for(method).save(tmp, model))
