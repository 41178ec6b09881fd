"""A hashed bag-of-words encoder scored like CLIP: cosine of an input with each class name.

``embed(text) = normalize(fc2(gelu(fc1(mean_w E[hash(w)]))))``; the same encoder embeds inputs and
class prompts; ``logits = scale * cos(input, class)``; the loss is cross-entropy over the task's
classes. Its linears are named ``fc1`` / ``fc2``, so rankwise's ``toy`` target preset adapts them.

Backbone contract (rankwise.tasks.Backbone): ``model``, ``default_target_preset``, ``collate``,
``loss``, ``predict``, ``targets``; factory ``build_backbone(config, device)``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.errors import ConfigError
from rankwise.tasks import ClassificationExample, Task


@dataclass
class BagOfWordsConfig:
    """Sizes of the bag-of-words encoder."""

    buckets: int = field(default=512, metadata={"help": "hash buckets for words"})
    dim: int = field(default=32, metadata={"help": "width of the embedding and hidden layer"})
    scale: float = field(default=10.0, metadata={"help": "multiplier of cosine similarities"})
    init_seed: int = field(default=0, metadata={"help": "seed of the random 'pre-trained' weights"})

    def __post_init__(self) -> None:
        for name in ("buckets", "dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise ConfigError(f"backbone.{name}", getattr(self, name), "an integer >= 2")
        if not self.scale > 0:
            raise ConfigError("backbone.scale", self.scale, "a number > 0")


class BagOfWords(nn.Module):
    def __init__(self, config: BagOfWordsConfig) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(config.buckets, config.dim, mode="mean")
        self.fc1 = nn.Linear(config.dim, config.dim)
        self.fc2 = nn.Linear(config.dim, config.dim)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(F.gelu(self.fc1(self.embed(ids, offsets)))), dim=-1)


class BagOfWordsBackbone:
    default_target_preset = "toy"

    def __init__(self, config: BagOfWordsConfig, device: torch.device) -> None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.init_seed)  # fixed "pre-trained" weights, global RNG left as it was
        self.model = BagOfWords(config).to(device)
        torch.random.set_rng_state(generator_state)
        self.config, self.device = config, device

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(zlib.crc32(w.encode()) % self.config.buckets for w in text.split() or [""])
        as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=self.device)  # noqa: E731
        return self.model(as_tensor(ids), as_tensor(offsets))

    def _logits(self, batch: dict[str, Any], task: Task) -> torch.Tensor:
        prompts = [task.templates[0].format(c) if task.templates else c for c in task.class_names or []]
        return self.config.scale * self._encode(batch["texts"]) @ self._encode(prompts).T

    def collate(self, examples: Sequence[ClassificationExample], task: Task, train: bool) -> dict[str, Any]:
        labels = torch.tensor([e.label for e in examples], dtype=torch.long, device=self.device)
        return {"texts": [str(e.input) for e in examples], "labels": labels}

    def loss(self, batch: dict[str, Any], task: Task) -> torch.Tensor:
        return F.cross_entropy(self._logits(batch, task), batch["labels"])

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], task: Task) -> list[int]:
        return self._logits(batch, task).argmax(dim=1).tolist()

    def targets(self, batch: dict[str, Any]) -> list[int]:
        return batch["labels"].tolist()


def build_backbone(config: BagOfWordsConfig, device: str | torch.device | None = None) -> BagOfWordsBackbone:
    return BagOfWordsBackbone(config, torch.device(device or "cpu"))
