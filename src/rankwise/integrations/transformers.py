"""rankwise inside transformers' `Trainer`: the task lifecycle as a callback, adapter-only checkpoints.

    model = rankwise.get_model(BertForSequenceClassification(...), CoDyRAConfig(preset="bert",
                               modules_to_save=["classifier"]))
    trainer = RankwiseTrainer(model=model, args=TrainingArguments(...), train_dataset=task_1_data)
    trainer.train_task("sst2")                          # begin_task, train, end_task (CoDyRA merges)
    trainer.train_task("trec", train_dataset=task_2_data)
    model.save_pretrained("adapter/")                    # or load a checkpoint-N/ with load_model

`RankwiseTrainerCallback` drives the lifecycle: after every optimizer step
``model.after_optimizer_step(global_step + 1, max_steps)`` (CoDyRA's proximal gate step; 1-based
within the task, as each ``train()`` call counts from 0), and ``model.end_task()`` when training ends.
``begin_task`` must come before the Trainer builds its optimizer, which happens before any callback
runs, so it is `RankwiseTrainer.train_task`'s job (or yours, before ``trainer.train()``).

`RankwiseTrainer` adds to ``Trainer``: checkpoints (``checkpoint-N/``) that hold the adapter folder
(`RankwiseModel.save_pretrained`: adapter_config.json, adapter_model.safetensors, checksums.json) in
place of the full model; ``train_task(..., resume_from_checkpoint=...)`` that restores one into a
model fresh from `get_model` (`RankwiseModel.load_adapter`), with the optimizer, scheduler and RNG
states Trainer saved next to it; label names read from the wrapped model's forward.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers.trainer as hf_trainer
from transformers import Trainer, TrainerCallback
from transformers.utils import can_return_loss, find_labels

from rankwise.adapters import adapter_files
from rankwise.adapters.adapter_files import CONFIG_FILE
from rankwise.adapters.model import RankwiseModel
from rankwise.errors import CheckpointError, ConfigError, LifecycleError

__all__ = ["RankwiseTrainer", "RankwiseTrainerCallback", "require_rankwise_model"]


def require_rankwise_model(model: Any, where: str) -> RankwiseModel:
    """`model` if it is a RankwiseModel, else TypeError naming what was given."""
    if not isinstance(model, RankwiseModel):
        raise TypeError(
            f"{where} needs a rankwise.RankwiseModel (from rankwise.get_model(base, config)), got "
            f"{type(model).__module__}.{type(model).__name__}"
        )
    return model


class RankwiseTrainerCallback(TrainerCallback):
    """The task lifecycle of a RankwiseModel inside ``transformers.Trainer``.

    With a plain ``Trainer``: call ``model.begin_task(name)`` before building the Trainer (or before
    ``trainer.train()``, setting ``trainer.optimizer = trainer.lr_scheduler = None`` after a first
    task), pass ``callbacks=[RankwiseTrainerCallback()]``; the callback steps and ends the task, and
    writes the adapter folder into each ``checkpoint-N/`` (the plain Trainer also writes the full
    model there; `RankwiseTrainer` does not). `end_task_on_train_end` False leaves ``end_task`` to you.
    """

    def __init__(self, end_task_on_train_end: bool = True) -> None:
        self.end_task_on_train_end = end_task_on_train_end

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        require_rankwise_model(model, "RankwiseTrainerCallback")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        model = require_rankwise_model(model, "RankwiseTrainerCallback")
        if model.current_task is None:
            raise LifecycleError(
                "trainer.train() with no active task: call model.begin_task(name) before train() (the Trainer "
                "builds its optimizer before any callback runs, so factors made later would not train), or "
                "use RankwiseTrainer.train_task(name)"
            )
        if model.needs_task_inputs_at_end:
            raise ConfigError(
                "method", model.config.method,
                "a method without a feature-collection pass before end_task (this one needs "
                "collecting_task_inputs, which the Trainer integration does not run; use the rankwise engine)",
            )  # fmt: skip
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:
            missing = model.count_untrained([optimizer])
            if missing:
                raise LifecycleError(
                    f"the optimizer does not hold {missing} trainable tensor(s) of task "
                    f"{model.current_task!r}: it was built before begin_task(). Use RankwiseTrainer.train_task"
                    "(name), or set trainer.optimizer = trainer.lr_scheduler = None before trainer.train()"
                )

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # called before Trainer counts the step: global_step + 1 is this step's 1-based number
        require_rankwise_model(model, "RankwiseTrainerCallback").after_optimizer_step(
            state.global_step + 1, max(state.max_steps, state.global_step + 1)
        )

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        model = require_rankwise_model(model, "RankwiseTrainerCallback")
        if self.end_task_on_train_end and model.current_task is not None:
            model.end_task()

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"{hf_trainer.PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir() and not (folder / CONFIG_FILE).exists():
            require_rankwise_model(model, "RankwiseTrainerCallback").save_pretrained(folder)


@contextlib.contextmanager
def _align_tokens_on_wrapped_model() -> Iterator[None]:
    """Inside, Trainer.train aligns the tokenizer's special tokens with the wrapped model's transformers
    config: it reads ``model.config``, which on a RankwiseModel is the adapter config."""
    original = hf_trainer.align_special_tokens

    def align(model: Any, processing_class: Any) -> Any:
        return original(model.base_model if isinstance(model, RankwiseModel) else model, processing_class)

    hf_trainer.align_special_tokens = align
    try:
        yield
    finally:
        hf_trainer.align_special_tokens = original


class RankwiseTrainer(Trainer):
    """``transformers.Trainer`` for a RankwiseModel: one task per `train_task`, adapter-only
    checkpoints, resume from them. Takes every argument of ``Trainer``; adds a
    `RankwiseTrainerCallback` unless one is given."""

    def __init__(
        self, model: Any = None, args: Any = None, *rest: Any, callbacks: list[Any] | None = None, **kwargs: Any
    ) -> None:
        model = require_rankwise_model(model, "RankwiseTrainer(model=...)")
        if getattr(args, "load_best_model_at_end", False):
            raise ConfigError(
                "load_best_model_at_end", True,
                "False with RankwiseTrainer (a trained model cannot take back an earlier adapter in place); "
                "load the best one with rankwise.load_model(fresh_base, trainer.state.best_model_checkpoint)",
            )  # fmt: skip
        callbacks = list(callbacks or [])
        if not any(isinstance(c, RankwiseTrainerCallback) for c in callbacks):
            callbacks.append(RankwiseTrainerCallback())
        super().__init__(model, args, *rest, callbacks=callbacks, **kwargs)
        if self.args.label_names is None:  # Trainer read them from RankwiseModel's own class
            self.label_names = find_labels(type(model.base_model))
            self.can_return_loss = can_return_loss(type(model.base_model))

    def train_task(
        self, name: str, train_dataset: Any = None, resume_from_checkpoint: str | os.PathLike[str] | None = None,
        **train_kwargs: Any,
    ) -> Any:  # fmt: skip
        """Train task `name`: ``model.begin_task(name)``, a fresh optimizer and scheduler (the factors
        are new), ``train()``, ``end_task()``. With `resume_from_checkpoint` (a ``checkpoint-N/`` of
        this task) the model, fresh from get_model, takes the checkpoint's adapter instead of
        beginning the task. Returns what ``Trainer.train`` returns."""
        model: RankwiseModel = self.model
        if model.config.keep_optimizer:
            raise ConfigError(
                "keep_optimizer", True, "False with RankwiseTrainer: it builds a fresh optimizer for each task"
            )
        if train_dataset is not None:
            self.train_dataset = train_dataset
        if resume_from_checkpoint is None:
            model.begin_task(name)
        self._rankwise_task = name
        self.optimizer, self.lr_scheduler = None, None
        try:
            return self.train(resume_from_checkpoint=resume_from_checkpoint, **train_kwargs)
        finally:
            self._rankwise_task = None

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with _align_tokens_on_wrapped_model():
            return super().train(*args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The adapter folder in place of the full model (plus the processing class and the arguments,
        as Trainer saves them)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        self.model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, hf_trainer.TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        folder = Path(resume_from_checkpoint)
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{folder} holds no rankwise adapter ({CONFIG_FILE} missing); resume from a checkpoint-N/ "
                "folder written by RankwiseTrainer"
            )
        saved_task = adapter_files.read_header(folder)["current_task"]
        task = getattr(self, "_rankwise_task", None)
        if saved_task is None or (task is not None and saved_task != task):
            raise CheckpointError(
                f"{folder / CONFIG_FILE}: field current_task={saved_task!r}: expected the task being resumed "
                f"({task!r}); a checkpoint written during task T resumes with train_task(T, resume_from_checkpoint=...)"
            )
        self.model.load_adapter(folder)
