"""What every CLIP backbone shares: batches, the evaluation path, the training loss and the shared options.

The two models (open_clip and transformers `CLIPModel`) live in `rankwise.backbones.clip`.

Zero-shot classification (Radford et al., 2021): with L2-normalised image features f(x) and class
prompt features t_c = g(template(c)),

    logits[i, c] = exp(logit_scale) * <f(x_i), t_c>.

Training loss on task t (docs/methods.md), for a batch of N images with labels y_i among the task's C
classes, prompts made with ``templates[0]``, S = the classes of tasks 1..t-1 (``seen_class_count``),
s = exp(logit_scale) and logits[i, c] over the current classes only:

    image->text:  L_i2t = mean_i CE(logits[i, :], y_i)
    loss = L_i2t + t2i_weight * L_t2i

    text->image, ``t2i_loss="official"`` (default; MoRAM XTAIL/models/moram.py and CoDyRA
    models/codyra.py, ``F.cross_entropy(t_logits, mask)``):
        L_t2i = 1/(S + C) * sum_c sum_{i: y_i = c} -log softmax_i(logits[:, c])_i
    text->image, ``t2i_loss="per_class_present"`` (rankwise's earlier form):
        L_t2i = mean_{c in U} ( - sum_i q[c, i] * log softmax_i(logits[:, c])_i ),
        q[c, i] = 1[y_i = c] / n_c,  U = classes present in the batch, n_c = their counts

The official code scores the image against all S + C prompts of tasks 1..t with the S seen ones
set to -inf, which is exactly CE over the C current classes, so the seen prompts are never encoded
here. Its text->image term is a cross-entropy with an unnormalised multi-hot target per prompt
(mask[c, i] = 1[y_i = c]) averaged over all S + C prompts: prompts without an image in the batch (every
seen one) add 0 but count in the mean, so the term shrinks as tasks accumulate (about 0.63 on the
last X-TAIL task against 11.0 for the per-class-present form, random features, batch 64). Both
forms use the same s. ``per_class_present`` is the natural multi-positive generalisation of CLIP's
caption->image term and does not depend on S; it is kept so that runs made before the official form
became the default can be reproduced, not because it is known to train better.
``t2i_weight=0`` gives the image->text loss alone (the official code with only the text encoder
adapted, ``target_encoder=text``).

Evaluation encodes every class of ``task.eval_class_names`` (the union of all tasks' classes for
X-TAIL; ``task.info["eval_segments"]`` tells which templates belong to which block of classes) with
all templates averaged (normalise each, mean, normalise again) or the first only, caches those text
features while nothing the text tower computes with changes (``prompt_cache.py``), and predicts
argmax indices in that label space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from rankwise.backbones.prompt_cache import PromptFeatureCache
from rankwise.errors import ConfigError, DataError, choices
from rankwise.tasks import Task, distinct_labels

EVAL_TEMPLATE_MODES = ("average", "first")
T2I_LOSS_FORMS = ("official", "per_class_present")
_TEXT_CHUNK = 256


@dataclass
class ClipBatch:
    """Preprocessed images, labels within the task, and labels in the evaluation label space."""

    pixels: torch.Tensor
    labels: torch.Tensor
    eval_labels: list[int]
    # the sorted distinct labels, found on the host by `collate` (the loss need not read `labels` back)
    present_labels: torch.Tensor | None = None


def to_pil(item: Any) -> Image.Image:
    """An image path, PIL image or uint8 array (H, W) / (H, W, C) as an RGB PIL image."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise DataError(f"image file {str(path)!r} does not exist")
        with Image.open(path) as image:
            return image.convert("RGB")
    if isinstance(item, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(item)).convert("RGB")
    if isinstance(item, torch.Tensor):
        return Image.fromarray(item.cpu().numpy()).convert("RGB")
    raise DataError(f"cannot read an image from {type(item).__name__}: expected a path, PIL image or array")


def _check_eval_templates(value: str) -> None:
    if value not in EVAL_TEMPLATE_MODES:
        raise ConfigError("backbone.eval_templates", value, choices(EVAL_TEMPLATE_MODES))


def _check_t2i(value: float) -> None:
    if not value >= 0:
        raise ConfigError("backbone.t2i_weight", value, "a number >= 0")


def _check_t2i_loss(value: str) -> None:
    if value not in T2I_LOSS_FORMS:
        raise ConfigError("backbone.t2i_loss", value, choices(T2I_LOSS_FORMS))


# The options both CLIP configs share: one definition each, so their defaults and help cannot drift apart.
def device_field() -> Any:
    return field(default=None, metadata={"help": "device; null = the engine's device"})


def eval_templates_field() -> Any:
    return field(default="average", metadata={"help": "evaluation prompts: average | first"})


def t2i_weight_field() -> Any:
    return field(default=1.0, metadata={"help": "weight of the text->image loss term"})


def t2i_loss_field() -> Any:
    return field(
        default="official",
        metadata={
            "help": "text->image loss: 'official' (MoRAM/CoDyRA: multi-hot cross-entropy averaged over "
            "all seen + current class prompts) or 'per_class_present' (rankwise's earlier form)"
        },
    )


def check_shared_options(config: Any) -> None:
    """The checks of the shared fields above (``eval_templates``, ``t2i_weight``, ``t2i_loss``)."""
    _check_eval_templates(config.eval_templates)
    _check_t2i(config.t2i_weight)
    _check_t2i_loss(config.t2i_loss)


class ClipBackbone:
    """Shared CLIP logic; subclasses provide `_encode_pixels`, `_encode_prompts` and `logit_scale`."""

    model: nn.Module
    default_target_preset: str = ""
    #: name prefixes of the image tower's modules: text features never depend on them
    image_modules: tuple[str, ...] = ()

    def __init__(
        self,
        model: nn.Module,
        preprocess_train: Callable[[Image.Image], torch.Tensor],
        preprocess_eval: Callable[[Image.Image], torch.Tensor],
        device: str | torch.device,
        eval_templates: str = "average",
        t2i_weight: float = 1.0,
        t2i_loss: str = "official",
    ) -> None:
        self.model = model
        self.preprocess_train = preprocess_train
        self.preprocess_eval = preprocess_eval
        self.device = torch.device(device)
        self.eval_templates = eval_templates
        self.t2i_weight = float(t2i_weight)
        _check_t2i_loss(t2i_loss)
        self.t2i_loss = t2i_loss
        # keyed on the text tower's whole state (prompt_cache.py); the image tower is left out
        self.prompt_cache = PromptFeatureCache(exclude=self.image_modules)

    # --- model specific -------------------------------------------------------------------
    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError

    # --- features -------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features (N, D)."""
        return F.normalize(self._encode_pixels(pixels).float(), dim=-1)

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features (P, D), encoded in chunks."""
        parts = [
            self._encode_prompts(list(prompts[i : i + _TEXT_CHUNK]))
            for i in range(0, len(prompts), _TEXT_CHUNK)
        ]
        return F.normalize(torch.cat(parts).float(), dim=-1)

    def class_features(self, class_names: Sequence[str], templates: Sequence[str], mode: str) -> torch.Tensor:
        """One normalised feature per class: template[0] only, or the mean over templates."""
        used = list(templates[:1]) if mode == "first" else list(templates)
        prompts = [t.format(c) for c in class_names for t in used]
        feats = self.encode_texts(prompts).view(len(class_names), len(used), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)

    def eval_text_features(self, task: Task) -> torch.Tensor:
        """Class features of the task's evaluation label space, cached until parameters change."""
        names = task.eval_class_names or task.class_names
        if not names or not task.templates:
            raise DataError(f"task {task.name!r} has no class names or templates; CLIP needs both")
        segments = task.info.get("eval_segments") if task.eval_class_names else None
        if not segments:
            segments = [{"offset": 0, "count": len(names), "templates": task.templates}]
        request = (
            tuple(names),
            tuple((s["offset"], s["count"], tuple(s["templates"])) for s in segments),
            self.eval_templates,
        )

        def compute() -> torch.Tensor:
            feats = []
            for s in sorted(segments, key=lambda s: s["offset"]):
                block = names[s["offset"] : s["offset"] + s["count"]]
                feats.append(self.class_features(block, s["templates"], self.eval_templates))
            features = torch.cat(feats)
            if features.shape[0] != len(names):
                raise DataError(
                    f"task {task.name!r}: eval_segments cover {features.shape[0]} of {len(names)} classes"
                )
            return features

        return self.prompt_cache.get(self.model, request, compute)

    # --- Backbone protocol ----------------------------------------------------------------
    def evaluation(self) -> AbstractContextManager[None]:
        """One evaluation pass: the text tower's state is hashed once for the prompt cache (prompt_cache.py)."""
        return self.prompt_cache.pinned()

    def collate(self, examples: Sequence[Any], task: Task, train: bool) -> ClipBatch:
        labels = [int(ex.label) for ex in examples]
        n = len(task.class_names or [])
        bad = [y for y in labels if not 0 <= y < n]
        if bad:
            raise DataError(f"task {task.name!r}: label {bad[0]} outside its {n} classes")
        transform = self.preprocess_train if train else self.preprocess_eval
        pixels = torch.stack([transform(to_pil(ex.input)) for ex in examples]).to(self.device)
        offset = task.label_offset if task.eval_class_names else 0
        return ClipBatch(
            pixels, torch.tensor(labels, device=self.device), [y + offset for y in labels], distinct_labels(labels, self.device)
        )

    def loss(self, batch: ClipBatch, task: Task) -> torch.Tensor:
        if not task.class_names or not task.templates:
            raise DataError(f"task {task.name!r} has no class names or templates; CLIP needs both")
        image = self.encode_images(batch.pixels)
        text = self.encode_texts([task.templates[0].format(c) for c in task.class_names])
        logits = self.logit_scale().exp() * image @ text.t()
        return clip_loss(
            logits, batch.labels, self.t2i_weight, self.t2i_loss, seen_class_count(task), batch.present_labels
        )

    @torch.no_grad()
    def predict(self, batch: ClipBatch, task: Task) -> list[int]:
        text = self.eval_text_features(task)
        return (self.encode_images(batch.pixels) @ text.t()).argmax(dim=-1).tolist()

    def targets(self, batch: ClipBatch) -> list[int]:
        return list(batch.eval_labels)


def clip_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    t2i_weight: float = 1.0,
    t2i_loss: str = "official",
    num_seen: int = 0,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_i2t + t2i_weight * L_t2i for logits (N images, C current classes) and labels (N,).

    ``t2i_loss="official"`` is the MoRAM / CoDyRA training loss, with ``num_seen`` = S classes of the
    earlier tasks; ``"per_class_present"`` is rankwise's earlier form (module docstring), which uses
    `present`, the sorted distinct labels, when given (else ``torch.unique(labels)``, a device read).
    """
    _check_t2i_loss(t2i_loss)
    loss = F.cross_entropy(logits, labels)
    if t2i_weight == 0:
        return loss
    if t2i_loss == "official":
        # softmax over the batch's images for every class prompt; only each image's own class row has a
        # target, and rows of classes without an image (all S seen ones included) add 0 but still count
        log_p = F.log_softmax(logits.t(), dim=1)  # (C, N)
        picked = log_p[labels, torch.arange(labels.shape[0], device=labels.device)]
        return loss + t2i_weight * (-picked.sum() / (int(num_seen) + logits.shape[1]))
    present = torch.unique(labels) if present is None else present
    q = (labels[None, :] == present[:, None]).float()  # (|U|, N)
    q = q / q.sum(dim=1, keepdim=True)
    log_p = F.log_softmax(logits[:, present].t(), dim=1)  # softmax over the batch's images
    return loss + t2i_weight * (-(q * log_p).sum(dim=1).mean())


def seen_class_count(task: Task) -> int:
    """S, the classes of the tasks before `task`: ``task.info["seen_class_count"]`` when the scenario
    records it, else ``task.label_offset`` (a union label space puts each task after the earlier ones)."""
    return int(task.info.get("seen_class_count", task.label_offset))
