"""``train.compile``: ``torch.compile`` the model's repeated blocks ("regional compilation").

What is compiled: every element of an ``nn.ModuleList`` that holds a linear layer (the repeated
transformer blocks of every backbone here: open_clip ``resblocks``, BERT / CLIP / LLaMA ``layers``,
the toy ``blocks``; outermost lists only), and every adapter layer outside such a block on its own.
Each module is compiled in place (`nn.Module.compile`), not wrapped, so:

* module names, state dicts and checkpoints are those of the eager model (no ``_orig_mod.`` prefix);
* every path a backbone calls the model by (``model(...)``, ``encode_image``, ``generate``) runs the
  compiled blocks, since a block's ``__call__`` is what is compiled;
* identical blocks share one compiled graph, so compile time does not grow with depth.

When: right after each task's ``begin_task`` (the zero-shot row runs eagerly). MoRAM, O-LoRA and
MoE-LoRA change their tensors' shapes at task boundaries, so every task compiles afresh:
`torch._dynamo.reset` drops the previous task's graphs first, which also keeps the number of graphs
per block far below Dynamo's recompile limit however many tasks a run has. Within a task, guards
recompile for train vs eval and a smaller last batch (dynamic shapes from the second size on).

Outputs equal the eager ones up to float rounding (inductor fuses and reorders elementwise work; the
engine test compares accuracy matrices and adapter tensors to 1e-5). Dropout is the exception: a
compiled dropout draws another random stream than eager PyTorch, so runs with dropout agree in
distribution only.
"""

from __future__ import annotations

import torch
from torch import nn

from rankwise.adapters.base import AdapterLayer

#: the torch.compile backend the engine uses (tests may swap in "aot_eager", which skips code generation)
BACKEND = "inductor"


def compile_regions(model: nn.Module) -> list[str]:
    """The names of the modules `compile_model` compiles (see the module docstring), in model order."""
    regions: list[str] = []
    covered: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in covered):
            continue
        if isinstance(module, nn.ModuleList):
            for index, block in enumerate(module):
                if any(isinstance(m, nn.Linear | AdapterLayer) for m in block.modules()):
                    regions.append(f"{name}.{index}" if name else str(index))
            covered.append(name)
        elif isinstance(module, AdapterLayer):
            regions.append(name)
            covered.append(name)
    return regions


def compile_model(model: nn.Module, backend: str | None = None) -> list[str]:
    """Drop every compiled graph (`torch._dynamo.reset`) and compile the regions of `model` in place;
    the names compiled. With no region (no repeated block, no adapter) the whole model is compiled."""
    torch._dynamo.reset()
    names = compile_regions(model) or [""]
    for name in names:
        model.get_submodule(name).compile(backend=backend or BACKEND)
    return names
