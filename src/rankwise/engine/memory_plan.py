"""Peak memory per GPU of a causal-LM run, estimated before anything is loaded (``rankwise run --dry-run``).

The model is built from its ``config.json`` on the ``meta`` device (shapes only, no weights, no
memory), the method's adapters are counted from the linears it targets (`AdapterConfig.layer_memory`,
one file per method), and the activations come from the layer shapes. With ``e`` the element size of
the weights (2 for bf16), ``s`` the sequence length, ``b`` the micro-batch, ``h`` the hidden size,
``kv`` the key/value width (heads_kv x head_dim), ``i`` the MLP width, ``L`` the layers, ``V`` the
vocabulary and ``N`` the processes:

* **weights:** every parameter at ``e`` bytes; with a quantized base the decoder's linear weights at
  1 byte (int8, plus a float32 scale per output row) or 0.5625 bytes (nf4: 4 bits plus a float32
  absmax per 64 values), embeddings, norms and the head stay at ``e``. FSDP (full shard) keeps
  ``1/N`` of them plus two decoder layers gathered whole (the one computing and the one prefetched)
  while a task trains. Between tasks (``end_task``, checkpoint, evaluation) rankwise gathers the whole
  model on every rank (engine/fsdp.py), so an FSDP plan's peak is the larger of the training sum and
  ``between tasks``: all weights at ``e`` bytes, the adapters, one evaluation batch's logits
  ``s b V (e + 4)`` and the fixed term.
* **adapters:** ``4 e n`` for the task's ``n`` trainable elements (factor, gradient, two Adam moments,
  all in the weights' dtype as rankwise creates them) plus what the method keeps of earlier tasks;
  the trainable part ``/N`` under FSDP (what is kept of earlier tasks, e.g. MoRAM's bank, is held in
  buffers, which FSDP does not shard). A method's extra peak (InfLoRA's input covariance and subspace memory) is not
  sharded: it is collected before the task's sharding and kept in buffers. DDP adds one gradient bucket copy, ``e n``.
* **activations** saved for backward, per decoder layer of a Llama-style block (RMSNorm, rotary
  attention through SDPA/flash, SwiGLU MLP): ``e s b (5 h + 3 kv + 2 h + 4 i)`` (attention: input,
  normed input, q, k, v, rotated q and k, attention output; MLP: input, normed input, gate, up,
  act(gate), product), plus per adapted linear its dropout copy and mask, ``(e + 1) s b in``, when
  ``lora_dropout > 0``. With gradient checkpointing only each layer's input, ``e s b h``, is kept,
  plus one layer's full set while it is recomputed.
* **logits:** ``s b V (2 e + 12)``: the logits and their gradient in the weights' dtype, and in the
  loss their float32 copy, its log-softmax and that one's gradient.
* **fixed:** 1 GiB for the CUDA context, cuBLAS workspaces and allocator slack.

These are estimates of the dominant terms, not measurements (the transient buffers of attention
kernels, optimizer ``foreach`` temporaries and fragmentation are left out or folded into the fixed
term); docs/scale.md compares them with a measured run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rankwise.engine.memory import GIB, adapted_shapes, adapter_bytes
from rankwise.engine.strategy import strategy_for

#: bytes per weight of the decoder's linear layers under each quantization of the base
QUANT_BYTES = {"none": None, "int8": 1.0, "nf4": 0.5 + 4 / 64}
FIXED_BYTES = GIB
#: common GPU memory sizes (GiB as reported by the driver, rounded down), for "fits on"
GPUS = {"T4/V100 16GB": 15, "A10G/L4/RTX 4090 24GB": 22, "A100 40GB": 39, "L40S/A6000 48GB": 44,
        "A100/H100 80GB": 79, "H200 141GB": 139}  # fmt: skip


@dataclass(frozen=True)
class LMShape:
    """What the activation and logits terms need from a decoder-only transformer's config."""

    hidden: int
    layers: int
    kv: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> LMShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.hidden_size, config.num_hidden_layers, kv_heads * head_dim,
                   config.intermediate_size, config.vocab_size)  # fmt: skip


@dataclass
class Plan:
    """One configuration's estimate: bytes per part, per GPU."""

    label: str
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    between_tasks: float = 0.0  # FSDP: the whole model gathered between tasks (module docstring)

    @property
    def total(self) -> float:
        return max(sum(self.parts.values()), self.between_tasks)

    def fits(self) -> list[str]:
        """The GPU classes of `GPUS` it fits on, smallest first."""
        return [name for name, gib in GPUS.items() if self.total <= gib * GIB]


def meta_model(config: Any) -> nn.Module:
    """The causal LM of a transformers config, on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def decoder_linears(model: nn.Module) -> tuple[int, int]:
    """(elements in the decoder layers' nn.Linear weights, elements in one decoder layer)."""
    layers = next(m for m in model.modules() if isinstance(m, nn.ModuleList))
    linear = sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))
    one = sum(p.numel() for p in layers[0].parameters())
    return linear, one


def estimate(
    model: nn.Module,
    shape: LMShape,
    adapter_config: Any | None,
    *,
    num_tasks: int,
    seq_len: int,
    batch: int,
    element: int = 2,
    checkpointing: bool = True,
    quant: str = "none",
    parallel: str = "single",
    gpus: int = 1,
) -> Plan:
    """Peak bytes per GPU while the last of `num_tasks` tasks trains (see the module docstring).
    `adapter_config` None is full fine-tuning (every weight trains, Adam in the weights' dtype)."""
    if quant not in QUANT_BYTES:
        raise ValueError(f"quant={quant!r}: expected one of {', '.join(QUANT_BYTES)}")
    if parallel not in ("single", "ddp", "fsdp"):
        raise ValueError(f"parallel={parallel!r}: expected single, ddp or fsdp")
    n = gpus if parallel == "fsdp" else 1
    total = sum(p.numel() for p in model.parameters())
    linear, one_layer = decoder_linears(model)
    plan = Plan(f"{parallel}{'' if parallel == 'single' else f' x{gpus}'}, base {quant}")
    weights = float(total * element)
    if quant != "none":
        weights = (total - linear) * element + linear * QUANT_BYTES[quant]
    gathered = 2 * one_layer * (element if quant == "none" else QUANT_BYTES[quant]) if n > 1 else 0
    plan.parts["weights"] = weights / n + gathered
    s, b, h = seq_len, batch, shape.hidden
    layer_acts = element * s * b * (7 * h + 3 * shape.kv + 4 * shape.intermediate)
    if adapter_config is None:
        trainable = total
        plan.parts["trainable state"] = 3 * total * element / n  # weights counted above: + grad + 2 moments
        dropout = 0.0
    else:
        shapes = adapted_shapes(model, adapter_config)
        trainable, need, extra = adapter_bytes(shapes, adapter_config, num_tasks, element)
        kept = need - 4 * trainable * element  # earlier tasks' tensors (MoRAM's bank): buffers, not sharded
        plan.parts["adapters"] = (need - kept) / n + kept
        if extra:  # not sharded: collected before the task's sharding, kept in buffers
            plan.parts["method peak (up to)"] = extra
            plan.notes.append("method peak: an upper bound (e.g. InfLoRA's covariance and subspace memory)")
        dropout = (element + 1) * s * b * sum(i for i, _ in shapes) / shape.layers if adapter_config.lora_dropout else 0.0
    if parallel == "ddp":
        plan.parts["DDP gradient bucket"] = trainable * element
    if checkpointing:
        plan.parts["activations"] = element * s * b * h * shape.layers + layer_acts + dropout
    else:
        plan.parts["activations"] = (layer_acts + dropout) * shape.layers
    plan.parts["logits"] = s * b * shape.vocab * (2 * element + 12)
    plan.parts["fixed"] = FIXED_BYTES
    if parallel == "fsdp":
        whole = 0.0 if adapter_config is None else need + extra  # every adapter tensor gathered
        plan.between_tasks = weights + whole + s * b * shape.vocab * (element + 4) + FIXED_BYTES
    if quant != "none" and parallel == "fsdp":
        plan.notes.append("FSDP over a quantized base needs a sharding-aware storage (bitsandbytes quant_storage)")
    return plan


def render(plans: list[Plan]) -> str:
    """A markdown table: one row per plan, GiB per part, the total and the GPUs it fits."""
    order = ["weights", "trainable state", "adapters", "method peak (up to)", "DDP gradient bucket",
             "activations", "logits", "fixed"]  # fmt: skip
    keys = [k for k in order if any(k in p.parts for p in plans)]
    between = any(p.between_tasks for p in plans)
    head = "| configuration | " + " | ".join(keys + ["between tasks"] * between) + " | total GiB | smallest GPU that fits |"
    lines = [head, "|" + "---|" * (len(keys) + 3 + between)]
    for p in plans:
        cells = " | ".join(
            [f"{p.parts[k] / GIB:.2f}" if k in p.parts else "-" for k in keys]
            + ([f"{p.between_tasks / GIB:.2f}" if p.between_tasks else "-"] if between else [])
        )
        lines.append(f"| {p.label} | {cells} | {p.total / GIB:.1f} | {(p.fits() or ['none of these'])[0]} |")
    return "\n".join(lines)


def plan_config(config: Any, gpus: tuple[int, ...] = (2, 4, 8)) -> tuple[list[Plan], list[str]]:
    """The estimates ``rankwise run --dry-run`` prints for a run config: the run as configured on one
    GPU (per GPU under DDP, plus its gradient bucket), FSDP over `gpus`, and the base quantized to
    int8 and nf4; and the assumptions taken from the config. Loads only the model's config."""
    from transformers import AutoConfig

    from rankwise.backbones.causal_lm_config import resolve_model_files
    from rankwise.errors import ConfigError

    if config.backbone.name != "causal-lm":
        raise ConfigError(
            "backbone.name", config.backbone.name, "causal-lm: --dry-run estimates decoder-only language models"
        )
    strategy = strategy_for(config.method.name)
    if not strategy.trains:
        raise ConfigError("method.name", config.method.name, "a method that trains (--dry-run estimates training)")
    bb = config.backbone.config
    folder, gguf = resolve_model_files(bb)
    hf_config = AutoConfig.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
    model = meta_model(hf_config)
    adapter = strategy.adapter_config(config, "llama")
    tasks = getattr(config.scenario.config, "tasks", None)
    num_tasks = len(tasks) if isinstance(tasks, (list, tuple)) and tasks else 1
    element = 2 if bb.dtype == "bfloat16" else 4
    micro = config.train.batch_size
    common = dict(num_tasks=num_tasks, seq_len=bb.max_length, batch=micro, element=element,
                  checkpointing=bb.gradient_checkpointing)  # fmt: skip
    shape = LMShape.from_config(hf_config)
    quant = bb.quantize  # backbone.quantize: the configured base
    plans = [estimate(model, shape, adapter, quant=quant, **common)]
    plans[0].label = f"as configured (base {quant}), 1 GPU (= per GPU under DDP, + bucket)"
    plans += [estimate(model, shape, adapter, parallel="fsdp", gpus=n, **common) for n in gpus]
    plans += [estimate(model, shape, adapter, quant=q, **common) for q in ("none", "int8", "nf4") if q != quant]
    params = sum(p.numel() for p in model.parameters())
    assumptions = [
        f"model: {type(model).__name__}, {params / 1e9:.2f}B parameters ({bb.dtype}), from {folder}",
        f"method: {config.method.name}"
        + (f", r={adapter.r}, targets {adapter.preset or adapter.target_modules}" if adapter else " (every weight)"),
        f"while training task {num_tasks} of {num_tasks} (what earlier tasks leave behind is counted)",
        f"sequence {bb.max_length} tokens (backbone.max_length, the longest a batch can be), micro-batch {micro}, "
        f"gradient checkpointing {'on' if bb.gradient_checkpointing else 'off'}",
    ]
    return plans, assumptions
