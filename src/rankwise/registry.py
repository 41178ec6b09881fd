"""Names users write in configs, mapped to the code that builds them.

Each entry points at a module attribute by string, so that listing names never imports torch
vision, open_clip or transformers. A backbone or scenario module exposes

* a ``@dataclass`` config class whose fields are its options (with ``metadata={"help": ...}``),
* a factory: ``build_backbone(config, device) -> Backbone`` or ``build_scenario(config, seed) -> list[Task]``.

The engine (and only the engine) resolves these names; adapters, backbones and scenarios never
import each other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from rankwise import plugins
from rankwise.errors import ConfigError, choices


@dataclass(frozen=True)
class Entry:
    name: str
    config: str  # "module:ConfigClass"
    factory: str  # "module:function"
    summary: str

    def load_config_class(self) -> type:
        return _resolve(self.config)

    def load_factory(self) -> Any:
        return _resolve(self.factory)


def _resolve(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


class PluginTable(dict):
    """A name -> Entry table that adds installed plugins (`rankwise.plugins`) before its first read."""

    def _plugins(self) -> None:
        _load_plugins()

    def __getitem__(self, name: str) -> Entry:
        self._plugins()
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self._plugins()
        return super().__contains__(name)

    def __iter__(self) -> Any:
        self._plugins()
        return super().__iter__()

    def __len__(self) -> int:
        self._plugins()
        return super().__len__()

    def get(self, name: str, default: Any = None) -> Any:
        self._plugins()
        return super().get(name, default)

    def keys(self) -> Any:
        self._plugins()
        return super().keys()

    def values(self) -> Any:
        self._plugins()
        return super().values()

    def items(self) -> Any:
        self._plugins()
        return super().items()


BACKBONES: dict[str, Entry] = PluginTable({
    e.name: e
    for e in [
        Entry("toy", "rankwise.backbones.toy:ToyBackboneConfig", "rankwise.backbones.toy:build_backbone",
              "tiny random dual encoder for tests and demos (no downloads)"),
        Entry("sentence-encoder", "rankwise.backbones.text:SentenceEncoderConfig",
              "rankwise.backbones.text:build_backbone",
              "transformers sentence encoder (default all-MiniLM-L6-v2) scored like CLIP"),
        Entry("open-clip", "rankwise.backbones.clip:OpenClipConfig", "rankwise.backbones.clip:build_open_clip",
              "open_clip CLIP by architecture name, weights from a local file or random init"),
        Entry("hf-clip", "rankwise.backbones.clip:HFClipConfig", "rankwise.backbones.clip:build_hf_clip",
              "transformers CLIPModel from a local folder"),
        Entry("causal-lm", "rankwise.backbones.causal_lm:CausalLMConfig", "rankwise.backbones.causal_lm:build_backbone",
              "transformers causal LM from a local folder or GGUF file, trained on answer tokens"),
    ]
})

SCENARIOS: dict[str, Entry] = PluginTable({
    e.name: e
    for e in [
        Entry("synthetic", "rankwise.scenarios.synthetic:SyntheticConfig", "rankwise.scenarios.synthetic:build_scenario",
              "seeded synthetic classification tasks for the toy backbone"),
        Entry("text-mtil", "rankwise.scenarios.text:TextMTILConfig", "rankwise.scenarios.text:build_scenario",
              "real text classification tasks from shared/data/text, in a fixed order"),
        Entry("text-classification", "rankwise.scenarios.text_classification:TextClassificationConfig",
              "rankwise.scenarios.text_classification:build_scenario",
              "your own text tasks: JSONL/CSV/Parquet files or Hugging Face datasets, pairs, presets"),
        Entry("mtil", "rankwise.scenarios.mtil:MTILConfig", "rankwise.scenarios.mtil:build_mtil",
              "the 11 MTIL image datasets (Order I/II, full or N-shot)"),
        Entry("xtail", "rankwise.scenarios.mtil:XTAILConfig", "rankwise.scenarios.mtil:build_xtail",
              "X-TAIL: 10 datasets, 16-shot, union label space at test time"),
        Entry("image-folder", "rankwise.scenarios.images:ImageFolderConfig", "rankwise.scenarios.images:build_scenario",
              "your own images: root/<task>/{train,test}/<class>/*"),
        Entry("trace", "rankwise.scenarios.trace:TraceConfig", "rankwise.scenarios.trace:build_scenario",
              "TRACE-format prompt/answer tasks from a folder"),
    ]
})


#: the names rankwise itself ships (plugins may add others, never replace these)
BUILTIN_BACKBONES = frozenset(dict.keys(BACKBONES))
BUILTIN_SCENARIOS = frozenset(dict.keys(SCENARIOS))


def _entry_problem(table: dict[str, Entry]) -> Any:
    def check(ep: Any, obj: Any) -> str | None:
        """Why `obj` cannot be registered in `table` under `ep.name`, or None."""
        if not isinstance(obj, Entry):
            return f"expected a rankwise.registry.Entry, found {type(obj).__name__}"
        if obj.name != ep.name:
            return f"its Entry is named {obj.name!r}; the entry point and the Entry must share one name"
        if dict.__contains__(table, ep.name):
            return f"the name {ep.name!r} is already taken (built in, or by another plugin)"
        for ref in (obj.config, obj.factory):
            if not isinstance(ref, str) or ref.count(":") != 1:
                return f"Entry reference {ref!r} is not 'module:attribute'"
        return None

    return check


def _register_plugins() -> None:
    for group, table in ((plugins.GROUPS["scenarios"], SCENARIOS), (plugins.GROUPS["backbones"], BACKBONES)):
        plugins.load_group(group, _entry_problem(table), lambda name, obj, t=table: dict.__setitem__(t, name, obj))


#: adds the installed scenario and backbone plugins to the tables, once per process (first read)
_load_plugins = plugins.Once(_register_plugins)


def reset_plugins() -> None:
    """Forget loaded plugins (tests): the next table read finds the installed entry points again."""
    for table, names in ((SCENARIOS, BUILTIN_SCENARIOS), (BACKBONES, BUILTIN_BACKBONES)):
        for name in [n for n in dict.keys(table) if n not in names]:
            dict.__delitem__(table, name)
    _load_plugins.done = False


def lookup(table: dict[str, Entry], name: str, field: str) -> Entry:
    if name not in table:
        raise ConfigError(field, name, choices(sorted(table)))
    return table[name]
