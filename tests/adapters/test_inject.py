"""Injection: target matching, presets, nn.MultiheadAttention split, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rankwise import CoDyRAConfig, LoRAConfig, MoRAMConfig, get_model
from rankwise.adapters import AdapterLayer
from rankwise.adapters.attention import SplitMultiheadAttention
from rankwise.errors import ConfigError, TargetModulesError


def _mha_pair(batch_first=False, bias=True, kdim=None, vdim=None, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(
        16, 4, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first
    )
    mha.eval()
    split = SplitMultiheadAttention(mha).eval()
    return mha, split


def _inputs(batch_first, L=5, S=7, B=3, E=16, kdim=16, vdim=16):
    def make(n, d):
        return torch.randn(B, n, d) if batch_first else torch.randn(n, B, d)

    return make(L, E), make(S, kdim), make(S, vdim)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_split_mha_equals_fused(batch_first, bias, need_weights):
    mha, split = _mha_pair(batch_first, bias)
    q, k, v = _inputs(batch_first)
    expected = mha(q, k, v, need_weights=need_weights)
    got = split(q, k, v, need_weights=need_weights)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    if need_weights:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)
    else:
        assert got[1] is None and expected[1] is None


@pytest.mark.parametrize("mask_kind", ["bool2d", "float2d", "float3d", "padding", "both", "causal"])
def test_split_mha_masks(mask_kind):
    mha, split = _mha_pair(batch_first=True)
    q, k, v = _inputs(True, L=6, S=6)
    kwargs: dict = {}
    if mask_kind in ("bool2d", "both"):
        kwargs["attn_mask"] = torch.rand(6, 6) > 0.7
        kwargs["attn_mask"].fill_diagonal_(False)
    if mask_kind == "float2d":
        kwargs["attn_mask"] = torch.randn(6, 6)
    if mask_kind == "float3d":
        kwargs["attn_mask"] = torch.randn(3 * 4, 6, 6)
    if mask_kind in ("padding", "both"):
        kwargs["key_padding_mask"] = torch.tensor(
            [[False] * 6, [False] * 4 + [True] * 2, [False] * 5 + [True]]
        )
    if mask_kind == "causal":
        kwargs["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(6)
        kwargs["is_causal"] = True
    for need_weights in (True, False):
        expected = mha(q, k, v, need_weights=need_weights, **kwargs)[0]
        torch.testing.assert_close(
            split(q, k, v, need_weights=need_weights, **kwargs)[0], expected, rtol=1e-5, atol=1e-5
        )


def test_split_mha_per_head_weights_kdim_vdim_and_unbatched():
    mha, split = _mha_pair(kdim=10, vdim=12)
    q, k, v = _inputs(False, kdim=10, vdim=12)
    e_out, e_w = mha(q, k, v, average_attn_weights=False)
    g_out, g_w = split(q, k, v, average_attn_weights=False)
    torch.testing.assert_close(g_out, e_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_w, e_w, rtol=1e-5, atol=1e-6)
    q1, k1, v1 = q[:, 0], k[:, 0], v[:, 0]
    torch.testing.assert_close(split(q1, k1, v1)[0], mha(q1, k1, v1)[0], rtol=1e-5, atol=1e-5)


def test_split_then_fuse_round_trips():
    mha, split = _mha_pair(batch_first=True)
    fused = split.to_fused().eval()
    q, k, v = _inputs(True)
    assert isinstance(fused, nn.MultiheadAttention)
    torch.testing.assert_close(fused(q, k, v)[0], mha(q, k, v)[0], rtol=1e-6, atol=1e-6)


def _tiny_open_clip():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=100, width=64, heads=2, layers=2),
    ).eval()


def test_open_clip_preset_splits_attention_and_keeps_outputs():
    model = _tiny_open_clip()
    images, texts = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2, 16))
    before = model(images, texts)
    wrapped = get_model(model, CoDyRAConfig(r=4, preset="open_clip"))
    layers = wrapped.adapter_layers()
    # 2 towers x 2 blocks x (q, k, v, out_proj, c_fc, c_proj)
    assert len(layers) == 24
    assert (
        "visual.transformer.resblocks.0.attn.q_proj" in layers
        and "transformer.resblocks.1.mlp.c_proj" in layers
    )
    assert not any(isinstance(m, nn.MultiheadAttention) for m in wrapped.modules())
    wrapped.begin_task("t")  # B = 0: still the same function
    after = wrapped(images, texts)
    for a, b in zip(after[:2], before[:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert wrapped.encode_image(images).shape == (2, 32)  # attribute fall-through to the base model


def test_adapters_on_split_attention_change_the_output():
    model = _tiny_open_clip()
    images = torch.randn(2, 3, 32, 32)
    before = model.encode_image(images)
    wrapped = get_model(model, LoRAConfig(r=2, target_modules=["attn.q_proj"]))
    wrapped.begin_task("t")
    for layer in wrapped.adapter_layers().values():
        nn.init.normal_(layer.lora_B)
    assert not torch.allclose(wrapped.encode_image(images), before, atol=1e-4)


def test_fused_out_proj_alone_is_split_not_silently_ignored():
    torch.manual_seed(0)
    block = nn.Sequential()
    block.add_module("attn", nn.MultiheadAttention(16, 2))
    wrapped = get_model(block, LoRAConfig(r=2, target_modules=["out_proj"]))
    assert isinstance(wrapped.base_model.attn, SplitMultiheadAttention)
    assert list(wrapped.adapter_layers()) == ["attn.out_proj"]


def test_regex_targets_and_exclusions():
    model = _tiny_open_clip()
    wrapped = get_model(model, MoRAMConfig(r=2, target_modules=r"visual\..*\.(c_fc|c_proj)"))
    assert sorted(wrapped.adapter_layers()) == [
        f"visual.transformer.resblocks.{i}.mlp.{n}" for i in range(2) for n in ("c_fc", "c_proj")
    ]
    model = _tiny_open_clip()
    wrapped = get_model(model, CoDyRAConfig(r=2, preset="open_clip", exclude_modules=r"transformer\..*"))
    assert wrapped.adapter_layers() and all(n.startswith("visual.") for n in wrapped.adapter_layers())


def test_hf_bert_preset():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    ).eval()
    wrapped = get_model(bert, CoDyRAConfig(r=4, preset="bert"))
    names = sorted(n.split("layer.0.")[1] for n in wrapped.adapter_layers() if "layer.0." in n)
    assert names == [
        "attention.output.dense",
        "attention.self.key",
        "attention.self.query",
        "attention.self.value",
        "intermediate.dense",
        "output.dense",
    ]
    assert not any("pooler" in n for n in wrapped.adapter_layers())


def test_no_match_lists_nearest_names():
    model = _tiny_open_clip()
    with pytest.raises(TargetModulesError) as info:
        get_model(model, LoRAConfig(target_modules=["q_prj", "cfc"]))
    message = str(info.value)
    assert "q_prj" in message and "c_fc" in message and "out_proj" in message


def test_config_errors_name_the_field():
    cases = [
        (lambda: LoRAConfig(r=0), "r=0"),
        (lambda: LoRAConfig(lora_dropout=1.5), "lora_dropout=1.5"),
        (lambda: CoDyRAConfig(prox="hard"), "prox='hard'"),
        (lambda: CoDyRAConfig(dense_fraction=1.0), "dense_fraction=1.0"),
        (lambda: MoRAMConfig(tau=0), "tau=0"),
        (lambda: MoRAMConfig(top_k=0), "top_k=0"),
        (lambda: MoRAMConfig(preset="vit"), "preset='vit'"),
        (lambda: LoRAConfig(target_modules="(unclosed"), "target_modules='(unclosed'"),
        (lambda: LoRAConfig(target_modules=[]), "target_modules=[]"),
    ]
    for make, text in cases:
        with pytest.raises(ConfigError, match=r"expected") as info:
            make()
        assert text in str(info.value)
    with pytest.raises(ConfigError, match="preset"):
        get_model(nn.Linear(2, 2), LoRAConfig())


def test_injecting_twice_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    get_model(model, LoRAConfig(target_modules=["0"]))
    with pytest.raises(ConfigError, match="already"):
        get_model(model, LoRAConfig(target_modules=["0"]))
    assert sum(isinstance(m, AdapterLayer) for m in model.modules()) == 1


# -- target_modules regex: linear-time name matching (issue 17) ---------------------------------------
_PATTERNS = [
    r".*q_proj", r"(.*)*X", r"([a-z_.0-9]+)+X", r"(\w|\w)*X\.", r"(a|aa)*(b|bb)*Z", r"(a|aa)*b",
    r"^.*\.(q|v)_proj$", r"(.*\.)*(q|v)_proj", r"(\w+\.)+\d+\.\w+", r"[^.]+(\.[^.]+)*", r"(a*)*b", r"(?:x|y)+",
    r".{2,5}", r"(ab|a)(bc|c)*", r"\D+\d*(\.\w+)*", r"((a|b)+c?)+", r"[\s\S]*", r"(.*?)+?q", r"(\d\.)+",
    r"(x+x+)+y", r"(?s)(.+)+a", r"(\.|_)*[^a]+(q|\d)*",
]  # fmt: skip


def test_name_regex_agrees_with_re_fullmatch():
    """The linear-time matcher gives re.fullmatch's answer (short names, where re is still fast)."""
    import random
    import re

    from rankwise.adapters.name_regex import NamePattern

    rng = random.Random(0)
    names = ["b.0.q_proj", "a", "", "aaab", "x.y", "b.v_proj", "ab\nc", "xxy", "Xx."]  # short: `re` is the slow side
    names += ["".join(rng.choice("ab.xyq_01Z\n") for _ in range(rng.randint(0, 9))) for _ in range(300)]
    nfa_used = 0
    for pattern in _PATTERNS:
        compiled = NamePattern(pattern)
        nfa_used += compiled._re is None
        for name in names:
            assert compiled.fullmatch(name) == (re.fullmatch(pattern, name) is not None), (pattern, name)
    assert nfa_used >= 12  # most of these take the NFA path (the point of the test)


def test_backtracking_regex_matches_long_names_quickly():
    """(a|aa)*-style patterns need ~2**n steps in `re` on a failing 60-character name; here milliseconds."""
    import time

    from rankwise.adapters.inject import matches

    name = "encoder.layers.11.self_attention.query_key_value_projection_x"
    start = time.perf_counter()
    for pattern in (r"([a-z_.0-9]+)+X", r"(.*)*X", r"(\w|\w|\.)*X", r"(x+x+)+y"):
        assert not matches(name, pattern)
        assert matches(name + "X", pattern) == pattern.endswith("X") or pattern == r"(x+x+)+y"
    assert time.perf_counter() - start < 5.0


def test_regex_features_that_need_backtracking_are_refused():
    from rankwise.adapters.inject import matches

    for pattern, needle in ((r"(a)\1", "backreferences"), (r"(?!visual).*proj", "lookarounds"),
                            (r"(?i)(q+)+_proj", "flags")):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            matches("text.q_proj", pattern)
        assert info.value.field == "target_modules" and needle in str(info.value)
    assert matches("text.q_proj", r"(?i)text\.Q_PROJ")  # plainly safe patterns keep re's full syntax
