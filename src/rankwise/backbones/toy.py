"""A tiny randomly initialised dual encoder, scored like CLIP, for tests and demos without downloads.

Two small transformer towers embed (a) an input, a sequence of token ids, and (b) each class
prompt, ``templates[0].format(class_name)`` split into words hashed to token ids. Scores are
``logit_scale * cos(input, class)``. The training loss is CLIP-style:

    L = CE(input -> class) + L_class->input,

where ``L_class->input`` is, for every class c present in the batch, the cross-entropy of the
column ``logits[:, c]`` (over the batch's inputs) against a uniform target on the inputs labelled c.

The linear layers are named like CLIP/LLaMA layers (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``, ``fc1``, ``fc2``) so that adapter target presets apply; the default preset is
``"toy"``. Weights are a fixed function of ``init_seed`` and do not touch the global RNG.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.errors import ConfigError, DataError
from rankwise.tasks import PRESENT_LABELS, ClassificationExample, Task, distinct_labels


@dataclass
class ToyBackboneConfig:
    """Sizes of the toy dual encoder."""

    vocab_size: int = field(default=64, metadata={"help": "token ids are in [1, vocab_size); 0 pads"})
    dim: int = field(default=32, metadata={"help": "width of both towers"})
    layers: int = field(default=1, metadata={"help": "transformer blocks per tower"})
    heads: int = field(default=2, metadata={"help": "attention heads (must divide dim)"})
    mlp_ratio: int = field(default=2, metadata={"help": "MLP hidden width = mlp_ratio * dim"})
    embed_dim: int = field(default=32, metadata={"help": "dimension of the joint embedding space"})
    max_len: int = field(default=16, metadata={"help": "longest input / prompt in tokens"})
    dropout: float = field(default=0.0, metadata={"help": "dropout after attention and MLP"})
    init_seed: int = field(default=0, metadata={"help": "seed of the random 'pre-trained' weights"})

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "layers", "heads", "mlp_ratio", "embed_dim", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"backbone.{name}", value, "a positive integer")
        if self.vocab_size < 2:
            raise ConfigError("backbone.vocab_size", self.vocab_size, "an integer >= 2")
        if self.dim % self.heads:
            raise ConfigError("backbone.heads", self.heads, f"a divisor of dim={self.dim}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError("backbone.dropout", self.dropout, "a number in [0, 1)")


class ToyBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.ln1(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        att = att.masked_fill(pad[:, None, None, :], float("-inf")).softmax(-1)
        x = x + self.drop(self.out_proj((att @ v).transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class ToyEncoder(nn.Module):
    """Token + position embedding, transformer blocks, mean pooling over non-padding, projection."""

    def __init__(self, cfg: ToyBackboneConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=0)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        hidden = cfg.mlp_ratio * cfg.dim
        self.blocks = nn.ModuleList(
            ToyBlock(cfg.dim, cfg.heads, hidden, cfg.dropout) for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.dim)
        self.projection = nn.Parameter(torch.randn(cfg.dim, cfg.embed_dim) / math.sqrt(cfg.dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0
        x = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (self.ln_final(x) * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return pooled @ self.projection


class ToyDualEncoder(nn.Module):
    """Input tower + text tower + learnable temperature, like CLIP."""

    def __init__(self, cfg: ToyBackboneConfig) -> None:
        super().__init__()
        self.input_tower = ToyEncoder(cfg)
        self.text_tower = ToyEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, tokens: torch.Tensor, class_tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes) = exp(logit_scale) * cosine similarity."""
        x = F.normalize(self.input_tower(tokens), dim=-1)
        c = F.normalize(self.text_tower(class_tokens), dim=-1)
        return self.logit_scale.exp() * x @ c.t()


class ToyBackbone:
    """Engine-facing wrapper (the `rankwise.tasks.Backbone` protocol) around `ToyDualEncoder`."""

    default_target_preset = "toy"

    def __init__(self, config: ToyBackboneConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            self.model: nn.Module = ToyDualEncoder(config)
        self.model.to(self.device)

    # -- tokenisation -------------------------------------------------------------------------
    def word_id(self, word: str) -> int:
        """Stable id of a prompt word: crc32(word) mod (vocab_size - 1) + 1 (0 is padding)."""
        return zlib.crc32(word.encode("utf-8")) % (self.config.vocab_size - 1) + 1

    def _pad(self, seqs: list[list[int]], what: str) -> torch.Tensor:
        longest = max(len(s) for s in seqs)
        if longest > self.config.max_len or min(len(s) for s in seqs) == 0:
            raise DataError(f"{what} lengths must be in [1, {self.config.max_len}] (backbone.max_len)")
        out = torch.zeros(len(seqs), longest, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out.to(self.device)

    def class_tokens(self, task: Task, train: bool) -> torch.Tensor:
        names = task.class_names if train or task.eval_class_names is None else task.eval_class_names
        if not names:
            raise DataError(f"task {task.name!r} has no class names; the toy backbone needs them")
        template = (task.templates or ["{}"])[0]
        words = [template.format(n.replace("_", " ")).split() for n in names]
        return self._pad([[self.word_id(w) for w in ws] for ws in words], f"task {task.name!r} prompt")

    # -- Backbone protocol ----------------------------------------------------------------------
    def collate(self, examples: Sequence[ClassificationExample], task: Task, train: bool) -> dict[str, Any]:
        seqs = [list(ex.input) for ex in examples]
        for s in seqs:
            if any((not isinstance(t, int)) or t <= 0 or t >= self.config.vocab_size for t in s):
                raise DataError(
                    f"task {task.name!r}: input token ids must be ints in [1, {self.config.vocab_size}) "
                    f"(backbone.vocab_size), got {s}"
                )
        offset = 0 if train else task.label_offset
        labels = [ex.label + offset for ex in examples]
        return {
            "tokens": self._pad(seqs, f"task {task.name!r} input"),
            "labels": torch.tensor(labels, dtype=torch.long, device=self.device),
            "class_tokens": self.class_tokens(task, train),
            PRESENT_LABELS: distinct_labels(labels, self.device),
        }

    def loss(self, batch: dict[str, Any], task: Task) -> torch.Tensor:
        logits = self.model(batch["tokens"], batch["class_tokens"]).float()
        labels = batch["labels"]
        input_to_class = F.cross_entropy(logits, labels)
        present = batch[PRESENT_LABELS] if PRESENT_LABELS in batch else labels.unique()
        onehot = (labels[:, None] == present[None, :]).float()  # (batch, present classes)
        target = onehot / onehot.sum(0, keepdim=True)
        log_p = logits[:, present].log_softmax(dim=0)  # over inputs
        class_to_input = -(target * log_p).sum(0).mean()
        return input_to_class + class_to_input

    @torch.no_grad()
    def predict(self, batch: dict[str, Any], task: Task) -> list[int]:
        return self.model(batch["tokens"], batch["class_tokens"]).argmax(-1).tolist()

    def targets(self, batch: dict[str, Any]) -> list[int]:
        return batch["labels"].tolist()


def build_backbone(config: ToyBackboneConfig, device: torch.device | str = "cpu") -> ToyBackbone:
    """Registry factory for ``backbone.name: toy``."""
    return ToyBackbone(config, device)
