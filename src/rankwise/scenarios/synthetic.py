"""Seeded synthetic classification tasks for the toy backbone (no downloads).

Each task has ``classes_per_task`` classes. A class owns ``signature_tokens`` token ids (disjoint
within a task, drawn afresh for every task from the same vocabulary, so tasks interfere and a
model can forget). An example is ``seq_len`` tokens; each position is, with probability
``1 - noise``, one of its class's signature tokens, otherwise a uniformly random token. Labels are
therefore learnable (a bag-of-tokens classifier reaches ~100% at low noise), while an untrained
model is at chance. Everything is a function of ``(seed, task index)`` via ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rankwise.errors import ConfigError
from rankwise.tasks import ClassificationExample, Task


@dataclass
class SyntheticConfig:
    """Sizes and difficulty of the synthetic stream."""

    num_tasks: int = field(default=3, metadata={"help": "number of tasks in the stream"})
    classes_per_task: int = field(default=4, metadata={"help": "classes in each task"})
    train_per_class: int = field(default=32, metadata={"help": "training examples per class"})
    test_per_class: int = field(default=16, metadata={"help": "test examples per class"})
    seq_len: int = field(default=8, metadata={"help": "tokens per example"})
    vocab_size: int = field(default=64, metadata={"help": "token ids are in [1, vocab_size)"})
    signature_tokens: int = field(default=3, metadata={"help": "tokens that identify a class"})
    noise: float = field(default=0.3, metadata={"help": "probability that a token is random"})

    def __post_init__(self) -> None:
        for name in (
            "num_tasks",
            "classes_per_task",
            "train_per_class",
            "test_per_class",
            "seq_len",
            "signature_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"scenario.{name}", value, "a positive integer")
        if self.classes_per_task < 2:
            raise ConfigError("scenario.classes_per_task", self.classes_per_task, "an integer >= 2")
        need = self.classes_per_task * self.signature_tokens + 1
        if not isinstance(self.vocab_size, int) or self.vocab_size < need:
            raise ConfigError(
                "scenario.vocab_size",
                self.vocab_size,
                f"an integer >= classes_per_task * signature_tokens + 1 = {need}",
            )
        if not isinstance(self.noise, (int, float)) or not 0.0 <= self.noise <= 1.0:
            raise ConfigError("scenario.noise", self.noise, "a number in [0, 1]")


def _examples(rng: random.Random, signatures: list[list[int]], per_class: int, cfg: SyntheticConfig):
    out = []
    for label, sig in enumerate(signatures):
        for _ in range(per_class):
            tokens = tuple(
                rng.randrange(1, cfg.vocab_size) if rng.random() < cfg.noise else rng.choice(sig)
                for _ in range(cfg.seq_len)
            )
            out.append(ClassificationExample(input=tokens, label=label))
    rng.shuffle(out)
    return out


def make_task(config: SyntheticConfig, seed: int, index: int) -> Task:
    """Task ``index`` of the stream; identical for identical (config, seed, index)."""
    rng = random.Random(f"synthetic/{seed}/{index}")
    pool = rng.sample(range(1, config.vocab_size), config.classes_per_task * config.signature_tokens)
    k = config.signature_tokens
    signatures = [pool[c * k : (c + 1) * k] for c in range(config.classes_per_task)]
    return Task(
        name=f"syn{index}",
        train=_examples(rng, signatures, config.train_per_class, config),
        test=_examples(rng, signatures, config.test_per_class, config),
        class_names=[f"t{index}_class{c}" for c in range(config.classes_per_task)],
        templates=["a {}"],
        metric="accuracy",
        info={"generator": "synthetic", "seed": seed, "signatures": signatures},
    )


def build_scenario(config: SyntheticConfig, seed: int) -> list[Task]:
    """Registry factory for ``scenario.name: synthetic``."""
    return [make_task(config, seed, i) for i in range(config.num_tasks)]
