"""A quantized frozen base (``backbone.quantize: int8 | nf4``): a loaded model's linears swapped for
bitsandbytes' quantized ones, before any adapter is injected.

Every ``nn.Linear`` of the model (exactly that class: attention and MLP projections) becomes

* ``int8``: ``bnb.nn.Linear8bitLt(has_fp16_weights=False, threshold=6.0)``, LLM.int8(): one int8 per
  weight (of the float16 weight) plus a float32 scale per output row (absmax / 127); threshold 6.0 is
  transformers' ``BitsAndBytesConfig`` default (input columns with a value above 6 are multiplied in
  16-bit).
* ``nf4``: ``bnb.nn.Linear4bit(quant_type="nf4", compress_statistics=False)``: 4-bit NormalFloat codes
  in blocks of 64 weights with a float32 absmax per block (0.5625 bytes a weight, as the memory plan
  counts it), multiplied in ``compute_dtype`` = the backbone's ``dtype``. Every quantized layer's
  in_features must be a multiple of 64 (bitsandbytes' CPU kernels quantize others wrongly).

On the CPU, int8 takes two paths: in training mode bitsandbytes multiplies by the de-quantized weight,
in eval mode it runs the real int8 product (inputs quantized per row too), so a CPU evaluation differs
slightly from the training-mode output (docs/scale.md has the numbers). nf4 multiplies by the
de-quantized weight in both: its AVX512-BF16 inference kernel is switched off
(``support_avx512bf16_for_cpu``), because bitsandbytes repacks the weight for it at the first eval
call and keeps using it in training mode, where it has no backward (no gradient reaches the input).
GPU kernels are bitsandbytes' own and were not run here.

The model's output projection (``get_output_embeddings()``, the LM head) and the embeddings stay as
they are. The swapped layers hold the float weights until the model is moved to its device:
bitsandbytes quantizes a weight in ``.to(device)``, on that device. Every quantized weight is frozen.
Adapters over these layers keep float factors and never write into the quantized bytes (a merge stays
a pair of factors; `rankwise.adapters.base.AdapterLayer.base_output`, docs/scale.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rankwise.errors import ConfigError, choices

QUANTIZE_KINDS = ("none", "int8", "nf4")
#: weights per nf4 block (one float32 absmax each)
NF4_BLOCK = 64
#: LLM.int8()'s outlier threshold (transformers' BitsAndBytesConfig.llm_int8_threshold default)
INT8_THRESHOLD = 6.0


def import_bitsandbytes(kind: str, field: str = "backbone.quantize") -> Any:
    """bitsandbytes, or a one-line ConfigError naming the extra that installs it."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ConfigError(
            field, kind, f"'none', or install bitsandbytes for it: pip install \"rankwise[quant]\" ({exc})"
        ) from None
    return bitsandbytes


def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the layers `quantize_linears` swaps: every plain nn.Linear but the output projection."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and m is not head]


def _quantized_copy(bnb: Any, linear: nn.Linear, kind: str, compute_dtype: torch.dtype) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s float weights, quantized at its next ``.to(device)``."""
    has_bias = linear.bias is not None
    weight = linear.weight.detach()
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
            threshold=INT8_THRESHOLD, device="meta",
        )  # fmt: skip
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype,
            compress_statistics=False, quant_type="nf4", device="meta",
        )  # fmt: skip
        layer.weight = bnb.nn.Params4bit(
            weight, requires_grad=False, compress_statistics=False, quant_type="nf4", module=layer
        )
        layer.support_avx512bf16_for_cpu = False  # see the module docstring
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    return layer


def quantize_linears(model: nn.Module, kind: str, compute_dtype: torch.dtype = torch.float32) -> list[str]:
    """Swap `model`'s linears (`quantizable_linears`) for bitsandbytes ``kind`` layers in place and
    return their names; ``kind`` "none" changes nothing. Move the model to its device afterwards
    (``model.to(device)``): that is when bitsandbytes quantizes the weights."""
    if kind not in QUANTIZE_KINDS:
        raise ConfigError("backbone.quantize", kind, choices(QUANTIZE_KINDS))
    if kind == "none":
        return []
    bnb = import_bitsandbytes(kind)
    names = quantizable_linears(model)
    narrow = [(n, model.get_submodule(n).in_features) for n in names]
    narrow = [(n, width) for n, width in narrow if width % NF4_BLOCK]
    if kind == "nf4" and narrow:  # bitsandbytes' CPU kernels quantize such a layer wrongly
        raise ConfigError(
            "backbone.quantize", kind, f"'int8' or 'none' for this model: nf4 needs in_features a multiple "
            f"of {NF4_BLOCK} (its block), but {narrow[0][0]} has {narrow[0][1]}",
        )  # fmt: skip
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quantized_copy(bnb, getattr(parent, child), kind, compute_dtype))
    return names


def base_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the weights of `model`'s linears by kind ("float", "int8", "nf4"), with their
    quantization statistics (int8: a float32 scale per row; nf4: the per-block absmax)."""
    totals = {"float": 0, "int8": 0, "nf4": 0}
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        stored = weight.numel() * weight.element_size()
        if weight.dtype.is_floating_point:
            totals["float"] += stored
        elif weight.dtype == torch.int8:
            scale = getattr(weight, "SCB", None)
            totals["int8"] += stored + (0 if scale is None else scale.numel() * scale.element_size())
        else:
            state = getattr(weight, "quant_state", None)
            absmax = getattr(state, "absmax", None)
            totals["nf4"] += stored + (0 if absmax is None else absmax.numel() * absmax.element_size())
    return totals
