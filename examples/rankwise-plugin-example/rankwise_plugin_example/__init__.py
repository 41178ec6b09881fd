"""The entry points of this plugin: one `Entry` per name, pointing at code by string.

This module is imported when rankwise first reads its registry, so it stays light: the scenario and
backbone modules (and torch) are imported only when a run uses them.
"""

from rankwise.registry import Entry

TINY_WORDS = Entry(
    "tiny-words",
    "rankwise_plugin_example.scenario:TinyWordsConfig",
    "rankwise_plugin_example.scenario:build_scenario",
    "plugin example: short word sentences about topics, a few tasks (no downloads)",
)
BAG_OF_WORDS = Entry(
    "bag-of-words",
    "rankwise_plugin_example.backbone:BagOfWordsConfig",
    "rankwise_plugin_example.backbone:build_backbone",
    "plugin example: hashed bag-of-words encoder scored like CLIP (random init)",
)
