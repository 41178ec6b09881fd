"""rankwise inside Lightning: the task lifecycle as a callback, adapter-only checkpoint contents.

    class Classifier(lightning.pytorch.LightningModule):      # holds a RankwiseModel as an attribute
        def configure_optimizers(self):
            return torch.optim.AdamW(self.model.trainable_parameters(), lr=1e-3)
    for task, loader in stream:
        trainer = lightning.pytorch.Trainer(max_steps=..., callbacks=[RankwiseCallback(task)])
        trainer.fit(module, loader)        # begin_task, after_optimizer_step each step, end_task
    rankwise_model = load_checkpoint_adapter(fresh_base, "last.ckpt")

`RankwiseCallback(task)`: in ``setup`` (before Lightning calls ``configure_optimizers``, so the new
factors are in the optimizer) ``begin_task(task)``; after each optimizer step
``after_optimizer_step(step, trainer.estimated_stepping_batches)`` (1-based within this fit); at the
end of training ``end_task()``. ``on_save_checkpoint`` keeps in ``checkpoint["state_dict"]`` only the
trainable tensors (the adapters' factors and `modules_to_save`) and adds ``checkpoint["rankwise_adapter"]``,
what `RankwiseModel.save_pretrained` writes (merged history included); `load_checkpoint_adapter`
rebuilds the model from it. Resuming ``fit(ckpt_path=...)`` from such a checkpoint is not supported:
Lightning loads the module's state dict (strictly) before any callback sees the checkpoint, while the
frozen weights and the merged history are not in it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from rankwise.adapters.model import RankwiseModel, load_model_from_payload
from rankwise.errors import CheckpointError, LifecycleError

__all__ = ["CHECKPOINT_KEY", "RankwiseCallback", "load_checkpoint_adapter"]

#: the key of the adapter payload ({"adapter_config": ..., "adapter_model": ...}) in a checkpoint
CHECKPOINT_KEY = "rankwise_adapter"


class RankwiseCallback(Callback):
    """The task lifecycle of the RankwiseModel inside a LightningModule (found among its submodules,
    or given as `model`). `task` None: begin the task yourself before ``fit``."""

    def __init__(self, task: str | None = None, model: RankwiseModel | None = None, end_task_on_train_end: bool = True):
        if model is not None and not isinstance(model, RankwiseModel):
            raise TypeError(f"RankwiseCallback(model=...) needs a rankwise.RankwiseModel, got {type(model).__name__}")
        self.task = task
        self.model = model
        self.end_task_on_train_end = end_task_on_train_end
        self._start_step = 0
        self._last_step = 0

    def find_model(self, pl_module: nn.Module) -> RankwiseModel:
        if self.model is not None:
            return self.model
        found = [m for m in pl_module.modules() if isinstance(m, RankwiseModel)]
        if len(found) != 1:
            raise TypeError(
                f"RankwiseCallback needs exactly one rankwise.RankwiseModel inside the LightningModule "
                f"(found {len(found)} in {type(pl_module).__name__}); pass it as RankwiseCallback(model=...)"
            )
        return found[0]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        model = self.find_model(pl_module)
        if stage == "fit" and self.task is not None and model.current_task != self.task:
            model.begin_task(self.task)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = self.find_model(pl_module)
        if model.current_task is None:
            raise LifecycleError(
                "fit() with no active task: give the task as RankwiseCallback(task) (it begins the task before "
                "Lightning builds the optimizer) or call model.begin_task(name) before fit()"
            )
        missing = model.count_untrained(trainer.optimizers)
        if missing:
            raise LifecycleError(
                f"the optimizer does not hold {missing} trainable tensor(s) of task {model.current_task!r}; "
                "configure_optimizers should return an optimizer over model.trainable_parameters()"
            )
        self._start_step = self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step - self._start_step
        if step > self._last_step - self._start_step:  # an optimizer step happened (not an accumulation batch)
            self._last_step = trainer.global_step
            total = trainer.estimated_stepping_batches
            total = int(total) if total != float("inf") else step
            self.find_model(pl_module).after_optimizer_step(step, max(total, step))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = self.find_model(pl_module)
        if self.end_task_on_train_end and model.current_task is not None:
            model.end_task()

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        model = self.find_model(pl_module)
        trainable = {n for n, p in pl_module.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        header, tensors = model.adapter_payload()
        checkpoint[CHECKPOINT_KEY] = {"adapter_config": header, "adapter_model": {k: t.detach().cpu() for k, t in tensors.items()}}


def load_checkpoint_adapter(model: nn.Module, checkpoint: str | os.PathLike[str] | dict[str, Any]) -> RankwiseModel:
    """`rankwise.load_model` from a Lightning checkpoint written with `RankwiseCallback` (a path or the
    loaded dict): `model` is a fresh copy of the base model; the same checks, the same result."""
    origin = "<checkpoint dict>"
    if not isinstance(checkpoint, dict):
        origin = os.fspath(checkpoint)
        checkpoint = torch.load(origin, map_location="cpu", weights_only=True)
    payload = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(payload, dict) or not {"adapter_config", "adapter_model"} <= set(payload):
        raise CheckpointError(
            f"{origin}: key {CHECKPOINT_KEY!r} is missing or incomplete: not a checkpoint written with "
            "rankwise.integrations.lightning.RankwiseCallback"
        )
    return load_model_from_payload(model, payload["adapter_config"], payload["adapter_model"], origin=origin)
