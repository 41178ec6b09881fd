"""Named target-module presets for model families users bring.

A list entry matches a module whose full name equals it or ends with "." + entry. nn.MultiheadAttention
(open_clip / OpenAI CLIP) is split into q_proj / k_proj / v_proj / out_proj before matching.
"""

from __future__ import annotations

TARGET_PRESETS: dict[str, list[str]] = {
    # open_clip / OpenAI CLIP: attention (split from the fused in_proj) and both MLP linears, both towers.
    "open_clip": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    # transformers CLIPModel: vision and text encoder layers.
    "hf_clip": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    # BERT-style encoders (BERT, MiniLM, RoBERTa): self-attention, attention output, intermediate, output.
    "bert": ["query", "key", "value", "output.dense", "intermediate.dense"],
    # Llama / Gemma / Qwen / SmolLM decoders: attention projections (the MoRAM paper's LLM placement).
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    # rankwise's toy dual encoder used in tests and demos.
    "toy": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
