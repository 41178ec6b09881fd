"""The wrapper's lifecycle: merge equivalence, save/load round trips, peft export, gradient isolation."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from rankwise import (
    CoDyRAConfig,
    LoRAConfig,
    MoRAMConfig,
    delta_state_dict,
    export_peft,
    get_model,
    load_model,
)
from rankwise.errors import CheckpointError, LifecycleError, RankwiseError


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 6)).eval()


def _train_task(model, name, steps=30, seed=0, lr=5e-2):
    """A few real optimizer steps on a random regression target (gates get pruned by the prox step)."""
    model.begin_task(name)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 10, generator=g), torch.randn(32, 6, generator=g)
    model.train()
    for it in range(1, steps + 1):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        model.after_optimizer_step(it, steps)
    model.eval()
    return x


CONFIGS = {
    "lora": lambda: LoRAConfig(r=4, target_modules=["0", "2", "4"]),
    "lora_merge": lambda: LoRAConfig(r=4, merge_on_task_end=True, target_modules=["0", "2", "4"]),
    "codyra": lambda: CoDyRAConfig(r=6, k_max=0.2, target_modules=["0", "2", "4"]),
    "moram": lambda: MoRAMConfig(r=4, tau=0.1, delta=0.1, lora_alpha=8, target_modules=["0", "2", "4"]),
}


@pytest.mark.parametrize("method", list(CONFIGS))
def test_three_task_lifecycle_and_bit_identical_reload(method, tmp_path):
    model = get_model(_mlp(), CONFIGS[method]())
    x = torch.randn(7, 10)
    for t in range(3):
        _train_task(model, f"task{t}", seed=t)
        model.end_task()
    assert model.tasks == ["task0", "task1", "task2"]
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["config"]["method"] == CONFIGS[method]().method and saved["tasks"] == model.tasks
    reloaded = load_model(_mlp(), tmp_path / "adapter").eval()
    assert torch.equal(reloaded(x), model(x))  # bit-identical
    # and a fourth task continues from the restored state on both
    for m in (model, reloaded):
        torch.manual_seed(3)  # fresh factors are drawn from the global RNG
        _train_task(m, "task3", seed=3)
    assert torch.equal(reloaded(x), model(x))


@pytest.mark.parametrize("method", ["codyra", "moram", "lora"])
def test_mid_task_save_restores_the_live_adapter(method, tmp_path):
    torch.manual_seed(0)
    model = get_model(_mlp(), CONFIGS[method]())
    _train_task(model, "a")
    model.end_task()
    _train_task(model, "b", steps=10)  # still active
    model.save_pretrained(tmp_path)
    reloaded = load_model(_mlp(), tmp_path).eval()
    assert reloaded.current_task == "b" and reloaded.tasks == ["a"]
    x = torch.randn(5, 10)
    assert torch.equal(reloaded(x), model(x))
    assert [p.shape for p in reloaded.trainable_parameters()] == [
        p.shape for p in model.trainable_parameters()
    ]
    assert all(
        torch.equal(a, b) for a, b in zip(reloaded.trainable_parameters(), model.trainable_parameters())
    )


def test_codyra_merge_equals_unmerged_and_drops_dead_ranks():
    model = get_model(_mlp(), CoDyRAConfig(r=8, k_max=0.3, target_modules=["0", "2", "4"]))
    x = _train_task(model, "a", steps=40)
    layers = model.adapter_layers()
    alive = {n: int((layer.gate != 0).sum()) for n, layer in layers.items()}
    assert any(a < 8 for a in alive.values())  # the prox step killed some ranks
    before = model(x)
    model.end_task()
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    for name, layer in layers.items():
        assert layer.merged_ranks == [alive[name]] and layer.merged_A_0.shape == (
            alive[name],
            layer.in_features,
        )
        assert not layer.trainable_parameters()
    assert model.rank_report()[0]["merged_ranks"] == [alive["0"]]


def test_codyra_has_zero_inference_overhead_after_merge_and_unload():
    base = _mlp()
    pristine = copy.deepcopy(base)
    model = get_model(base, CoDyRAConfig(r=4, target_modules=["0", "2", "4"]))
    x = _train_task(model, "a")
    model.end_task()
    expected = model(x)
    plain = model.merge_and_unload()
    assert [type(m) for m in plain.modules()] == [type(m) for m in pristine.modules()]
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in pristine.parameters())
    torch.testing.assert_close(plain(x), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(LifecycleError, match="unloaded"):
        model(x)


def test_merge_and_unload_refits_open_clip_attention():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    clip = CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=16, layers=1, width=32, patch_size=8, head_width=16),
        text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1),
    ).eval()
    model = get_model(clip, CoDyRAConfig(r=4, preset="open_clip"))
    model.begin_task("t")
    for layer in model.adapter_layers().values():
        nn.init.normal_(layer.lora_B, std=0.1)
    images, texts = torch.randn(2, 3, 16, 16), torch.randint(0, 50, (2, 8))
    model.end_task()
    expected = model(images, texts)[:2]
    plain = model.merge_and_unload()
    assert isinstance(plain.transformer.resblocks[0].attn, nn.MultiheadAttention)
    for a, b in zip(plain(images, texts)[:2], expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_moram_refuses_to_merge():
    model = get_model(_mlp(), CONFIGS["moram"]())
    with pytest.raises(RankwiseError, match="depends on the input"):
        model.merge_and_unload()


@pytest.mark.parametrize("method", ["codyra", "moram", "lora_merge"])
def test_gradients_reach_only_the_current_task(method):
    model = get_model(_mlp(), CONFIGS[method]())
    for t in range(2):
        _train_task(model, f"t{t}", steps=5)
        model.end_task()
    model.begin_task("t2")
    model.train()
    model(torch.randn(4, 10)).sum().backward()
    current = {id(p) for p in model.trainable_parameters()}
    assert current and all(p.grad is not None for p in model.trainable_parameters())
    for name, p in model.named_parameters():
        if id(p) not in current:
            assert p.grad is None and not p.requires_grad, name
    for layer in model.adapter_layers().values():
        for name, buf in layer.named_buffers():
            assert not buf.requires_grad, name


def test_lifecycle_errors():
    model = get_model(_mlp(), CONFIGS["codyra"]())
    with pytest.raises(LifecycleError, match="no active task"):
        model.end_task()
    with pytest.raises(LifecycleError, match="no active task"):
        model.after_optimizer_step(1, 10)
    model.begin_task("a")
    with pytest.raises(LifecycleError, match="still|active"):
        model.begin_task("b")
    with pytest.raises(ValueError, match="iteration=11"):
        model.after_optimizer_step(11, 10)
    model.end_task()
    with pytest.raises(LifecycleError, match="not used before"):
        model.begin_task("a")


def test_corrupted_or_mismatched_checkpoints_are_refused(tmp_path):
    model = get_model(_mlp(), CONFIGS["moram"]())
    _train_task(model, "a")
    model.end_task()
    model.save_pretrained(tmp_path / "ok")
    weights = (tmp_path / "ok" / "adapter_model.safetensors").read_bytes()
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    (tmp_path / "trunc" / "adapter_config.json").write_text(
        (tmp_path / "ok" / "adapter_config.json").read_text()
    )
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(_mlp(), tmp_path / "trunc")
    (tmp_path / "trunc" / "adapter_config.json").write_text('{"format": "rankwise-adapter", "conf')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(_mlp(), tmp_path / "trunc")
    other = nn.Sequential(nn.Linear(10, 24), nn.GELU(), nn.Linear(24, 6))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(other, tmp_path / "ok")
    with pytest.raises(CheckpointError, match="missing file"):
        load_model(_mlp(), tmp_path / "nowhere")


def test_moram_activation_statistics():
    model = get_model(_mlp(), MoRAMConfig(r=4, tau=0.1, delta=0.0, target_modules=["0"]))
    for t in range(2):
        _train_task(model, f"t{t}", steps=5)
        model.end_task()
    with model.track_activations():
        model(torch.randn(50, 10))
    report = model.rank_report()[0]
    assert report["bank_size"] == 8 and report["task_sizes"] == [4, 4] and report["tokens_seen"] == 50
    rates = report["activation_rate_per_task"]
    assert len(rates) == 2 and all(0 <= r <= 1 for r in rates)
    # delta = 0 switches pruning off: exactly the top-4 of 8 atoms carry weight on every token
    assert sum(r * 4 for r in rates) == pytest.approx(4.0)


def test_delta_state_dict_is_the_change_from_pretrained():
    base = _mlp()
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_model(base, CONFIGS["codyra"]())
    for t in range(2):
        _train_task(model, f"t{t}", seed=t)
        model.end_task()
    deltas = delta_state_dict(model)
    assert set(deltas) == {"0.weight", "2.weight", "4.weight"}
    for name, delta in deltas.items():
        now = model.adapter_layers()[name.split(".")[0]].base_layer.weight
        torch.testing.assert_close(delta, now - w0[name], rtol=1e-4, atol=1e-5)


def test_peft_export_round_trip(tmp_path):
    peft = pytest.importorskip("peft")
    model = get_model(_mlp(), CONFIGS["codyra"]())
    for t in range(3):
        _train_task(model, f"t{t}", seed=t)
        model.end_task()
    export_peft(model, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    ranks = {n: sum(layer.merged_ranks) for n, layer in model.adapter_layers().items()}
    assert config["rank_pattern"] == {n: r for n, r in ranks.items() if r > 0}
    peft_model = peft.PeftModel.from_pretrained(_mlp(), tmp_path / "peft").eval()
    x = torch.randn(9, 10)
    torch.testing.assert_close(peft_model(x), model(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_mlp()(x), model(x), atol=1e-3)  # the adapters did change the model


def test_peft_export_requires_finished_tasks(tmp_path):
    model = get_model(_mlp(), CONFIGS["codyra"]())
    model.begin_task("a")
    with pytest.raises(LifecycleError, match="end_task"):
        export_peft(model, tmp_path)


def test_small_transformers_model_three_tasks(tmp_path):
    from transformers import BertConfig, BertModel

    def bert():
        torch.manual_seed(0)
        return BertModel(
            BertConfig(
                vocab_size=60,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=48,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        ).eval()

    ids = torch.randint(0, 60, (4, 9))
    for cfg in (CoDyRAConfig(r=4, k_max=0.1, preset="bert"), MoRAMConfig(r=4, preset="bert")):
        model = get_model(bert(), cfg)
        for t in range(3):
            model.begin_task(f"t{t}")
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
            model.train()
            for it in range(1, 6):
                opt.zero_grad()
                model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
                opt.step()
                model.after_optimizer_step(it, 5)
            model.end_task()
        model.eval()
        out = model(input_ids=ids).last_hidden_state
        model.save_pretrained(tmp_path / cfg.method)
        again = load_model(bert(), tmp_path / cfg.method).eval()
        assert torch.equal(again(input_ids=ids).last_hidden_state, out)


def _snapshot(model):
    """(state_dict values, module types, requires_grad flags, parameter identities) of a plain model."""
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: type(m) for n, m in model.named_modules()},
        {n: (p.requires_grad, id(p)) for n, p in model.named_parameters()},
    )


def _assert_same(before, model):
    state, types, flags = before
    now_state, now_types, now_flags = _snapshot(model)
    assert now_types == types and now_flags == flags and list(now_state) == list(state)
    assert all(torch.equal(now_state[k], v) for k, v in state.items())


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_a_failure_after_merges_restores_the_base_weights(tmp_path, monkeypatch, error):
    """Loading merges history into layers 0 and 2 before layer 4 fails (an OOM or a Ctrl-C while
    loading): the merged weights are put back bit for bit, the adapters are removed, flags restored."""
    model = get_model(_mlp(), CONFIGS["codyra"]())
    for t in range(2):
        _train_task(model, f"t{t}", seed=t)
        model.end_task()
    model.save_pretrained(tmp_path / "adapter")
    fresh = _mlp()
    fresh[0].bias.requires_grad_(False)  # a user's own mix of flags
    before = _snapshot(fresh)
    from rankwise.adapters.codyra import CoDyRALinear

    original, calls = CoDyRALinear.load_adapter_state, []

    def flaky(self, meta, tensors):
        calls.append(self)
        if len(calls) == 3:
            raise error
        original(self, meta, tensors)

    monkeypatch.setattr(CoDyRALinear, "load_adapter_state", flaky)
    with pytest.raises(type(error)):
        load_model(fresh, tmp_path / "adapter")
    assert calls[0].merged_tasks == 2  # the first layers really had merged into their weights
    _assert_same(before, fresh)
    monkeypatch.setattr(CoDyRALinear, "load_adapter_state", original)
    x = torch.randn(5, 10)
    assert torch.equal(load_model(fresh, tmp_path / "adapter")(x), model(x))


def test_inject_adapters_alone_is_all_or_nothing(monkeypatch):
    """The attention is split and its q_proj wrapped before wrapping layer 1 fails: all undone."""
    from rankwise.adapters import inject, methods
    from rankwise.adapters.lora import LoRALinear

    class FailsOnSecond(LoRALinear):
        made = 0

        def __init__(self, base_layer, config):
            FailsOnSecond.made += 1
            if FailsOnSecond.made == 2:
                raise MemoryError("no room for the second adapter")
            super().__init__(base_layer, config)

    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    before = _snapshot(model)
    monkeypatch.setitem(methods._TABLE, "lora", methods.Method("lora", LoRAConfig, FailsOnSecond))
    with pytest.raises(MemoryError):
        inject.inject_adapters(model, LoRAConfig(target_modules=["q_proj", "1"]))
    assert FailsOnSecond.made == 2
    _assert_same(before, model)
    monkeypatch.undo()
    layers = inject.inject_adapters(model, LoRAConfig(target_modules=["q_proj"]))
    assert list(layers) == ["0.q_proj"] and type(model[0]).__name__ == "SplitMultiheadAttention"


def test_save_pretrained_writes_checksums_the_engine_also_verifies(tmp_path):
    import hashlib

    from rankwise.engine import checkpoint as ckpt

    model = get_model(_mlp(), CONFIGS["moram"]())
    _train_task(model, "a")
    model.end_task()
    folder = model.save_pretrained(tmp_path / "adapter")
    sums = json.loads((folder / "checksums.json").read_text())
    assert sums == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("adapter_config.json", "adapter_model.safetensors")
    }
    ckpt.verify_dir(folder)  # one format for both writers
    ckpt.write_checksums(folder)
    assert json.loads((folder / "checksums.json").read_text()) == sums
    (folder / "adapter_config.json").write_text((folder / "adapter_config.json").read_text() + " ")
    with pytest.raises(CheckpointError, match="adapter_config.json is corrupted"):
        load_model(_mlp(), folder)


def test_from_pretrained_is_a_classmethod_spelling_of_load_model(tmp_path):
    """`RankwiseModel.from_pretrained(base, folder)` (peft's spelling) is a classmethod of the class
    body (not a staticmethod attached after the class) and restores what `load_model` restores."""
    import inspect

    from rankwise.adapters.model import RankwiseModel

    assert isinstance(inspect.getattr_static(RankwiseModel, "from_pretrained"), classmethod)
    model = get_model(_mlp(), CONFIGS["codyra"]())
    _train_task(model, "a")
    model.end_task()
    _train_task(model, "b", steps=5)  # a live adapter too
    model.save_pretrained(tmp_path)
    via_class = RankwiseModel.from_pretrained(_mlp(), tmp_path).eval()
    via_function = load_model(_mlp(), tmp_path).eval()
    assert type(via_class) is RankwiseModel
    assert (via_class.tasks, via_class.current_task) == (["a"], "b")
    x = torch.randn(5, 10)
    assert torch.equal(via_class(x), model(x)) and torch.equal(via_class(x), via_function(x))
