"""A tiny text-classification stream: each task tells apart a few topics by their words.

Registry contract (see rankwise.registry): a config dataclass whose fields carry ``metadata={"help": ...}``
and validate in ``__post_init__`` with ConfigError, and ``build_scenario(config, seed) -> list[Task]``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rankwise.errors import ConfigError
from rankwise.tasks import ClassificationExample, Task

TOPICS = {
    "sports": "goal match team score coach league",
    "music": "song guitar band album concert melody",
    "food": "bread soup cheese recipe kitchen spice",
    "space": "planet rocket orbit star comet galaxy",
    "weather": "rain storm cloud snow wind thunder",
    "money": "bank price stock coin market loan",
}
TASKS = [["sports", "music"], ["food", "space"], ["weather", "money"]]


@dataclass
class TinyWordsConfig:
    """Options of the tiny-words scenario."""

    num_tasks: int = field(default=2, metadata={"help": f"tasks in the stream, 1..{len(TASKS)}"})
    per_class: int = field(default=8, metadata={"help": "train sentences per class (test: half as many)"})
    words: int = field(default=3, metadata={"help": "words per sentence"})

    def __post_init__(self) -> None:
        if not isinstance(self.num_tasks, int) or not 1 <= self.num_tasks <= len(TASKS):
            raise ConfigError("scenario.num_tasks", self.num_tasks, f"an integer in [1, {len(TASKS)}]")
        for name in ("per_class", "words"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"scenario.{name}", getattr(self, name), "an integer >= 1")


def _sentences(topic: str, count: int, words: int, rng: random.Random) -> list[str]:
    vocabulary = TOPICS[topic].split()
    return [" ".join(rng.choice(vocabulary) for _ in range(words)) for _ in range(count)]


def build_scenario(config: TinyWordsConfig, seed: int) -> list[Task]:
    rng = random.Random(seed)
    tasks = []
    for classes in TASKS[: config.num_tasks]:
        def examples(count: int, classes: list[str] = classes) -> list[ClassificationExample]:
            return [ClassificationExample(text, label) for label, topic in enumerate(classes)
                    for text in _sentences(topic, count, config.words, rng)]  # fmt: skip

        tasks.append(Task("-".join(classes), examples(config.per_class), examples(max(config.per_class // 2, 1)),
                          class_names=list(classes), templates=["{}"], info={"source": "tiny-words"}))  # fmt: skip
    return tasks
