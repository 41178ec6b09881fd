"""Export what merged adapters added to the pre-trained weights.

After CoDyRA tasks, W = W0 + sum_t B_t A_t (dead ranks already dropped, gates and scaling folded
into B_t). Stacking the factors, A = [A_1; ...; A_T] and B = [B_1, ..., B_T], gives B A = W - W0: a
LoRA of rank sum_t r_t per layer, which peft loads with ``rank_pattern`` and ``alpha_pattern`` set so
that its scaling alpha / r is 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rankwise import io
from rankwise.adapters.adapter_files import CONFIG_FILE, WEIGHTS_FILE, check_folder_target
from rankwise.adapters.attention import SplitMultiheadAttention
from rankwise.adapters.model import RankwiseModel
from rankwise.errors import LifecycleError, RankwiseError


def stacked_factors(model: RankwiseModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name: (A, B)} with B @ A equal to everything merged into that layer so far."""
    factors = {}
    for name, layer in model.adapter_layers().items():
        history = layer.merged_history()
        if history:
            factors[name] = (torch.cat([a for a, _ in history]), torch.cat([b for _, b in history], dim=1))
    return factors


def delta_state_dict(model: RankwiseModel) -> dict[str, torch.Tensor]:
    """{"<layer>.weight": W - W0} (float32) for every layer that merged something."""
    return {f"{name}.weight": B.float() @ A.float() for name, (A, B) in stacked_factors(model).items()}


def peft_lora_config(
    ranks: dict[str, int],
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
    modules_to_save: list[str] | None = None,
) -> Any:
    """A ``peft.LoraConfig`` for stacked factors of rank ``ranks[layer]``, scaling alpha / r = 1 per layer,
    and the fully trained `modules_to_save` (e.g. a classifier head).

    Built by peft itself (its ``__post_init__`` validates), so the written JSON is peft's own schema.
    """
    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise RankwiseError("exporting to peft needs peft: pip install 'rankwise[peft]'") from exc
    first = next(iter(ranks.values()))
    return LoraConfig(
        r=first,
        lora_alpha=first,
        lora_dropout=0.0,
        bias="none",
        target_modules=sorted(ranks),
        rank_pattern=dict(ranks),
        alpha_pattern=dict(ranks),
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type,
        modules_to_save=modules_to_save or None,
        inference_mode=True,
    )


def export_peft(
    model: RankwiseModel,
    directory: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write a peft LoRA folder (adapter_config.json + adapter_model.safetensors) whose delta is W - W0.

    Load it with ``peft.PeftModel.from_pretrained(fresh_base_model, directory)``. `base_model_name_or_path`
    (a Hub id or folder) and `task_type` (a ``peft.TaskType`` name such as ``"FEATURE_EXTRACTION"`` or
    ``"CAUSAL_LM"``) fill the config's fields of the same names (``AutoPeftModel`` needs both).
    The model's `modules_to_save` (a head trained in full) become peft's ``modules_to_save``, their
    tensors stored under the names peft saves them with (``base_model.model.<module>.<tensor>``).
    """
    if model.current_task is not None:
        raise LifecycleError(
            f"task {model.current_task!r} is still active; call end_task() before export_peft()"
        )
    if not model.mergeable:  # e.g. MoRAM: a routed mixture is no fixed low-rank delta
        raise RankwiseError(
            f"method {model.config.method!r} cannot be exported to peft: it has no fixed low-rank delta "
            "(its output depends on routing per token); keep the rankwise adapter "
            "(save_pretrained / `rankwise export --to rankwise`)"
        )
    split = [n for n, m in model.base_model.named_modules() if isinstance(m, SplitMultiheadAttention)]
    factors = {n: f for n, f in stacked_factors(model).items() if f[0].shape[0] > 0}
    inside_split = [n for n in factors if any(n.startswith(s + ".") for s in split)]
    if inside_split:
        raise RankwiseError(
            f"layers {inside_split[:3]} live in a split nn.MultiheadAttention, which peft cannot target as q/k/v; "
            "use rankwise.adapters.export.delta_state_dict(model) or save_pretrained() instead"
        )
    if not factors:
        raise RankwiseError(
            "nothing has been merged yet: finish at least one task with surviving ranks first"
        )
    ranks = {name: int(A.shape[0]) for name, (A, _) in factors.items()}
    heads = model.saved_modules()
    config = peft_lora_config(ranks, base_model_name_or_path, task_type, sorted(heads)).to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}  # as peft writes sets
    tensors = {}
    for name, (A, B) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.contiguous()
    for name, module in heads.items():
        for key, value in module.state_dict().items():
            tensors[f"base_model.model.{name}.{key}"] = value.detach().contiguous()
    directory = Path(directory)
    check_folder_target(directory)
    io.save_tensors(directory / WEIGHTS_FILE, tensors, metadata={"format": "pt"})  # peft reads the same names
    io.write_json(directory / CONFIG_FILE, config)
    return directory
