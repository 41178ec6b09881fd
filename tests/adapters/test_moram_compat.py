"""MoRAM against hand-written references of the official code: delta <= 0, the official-TRACE switches
(unscaled frozen values, fresh atoms at end_task), inference options on a loaded model, the top_k warning.

`official_forward` is written from the official TRACE layer (TRACE/utils/my_peft/tuners/moram.py,
``forward``): frozen values ``lora_B`` used as stored, the live ``loranew_B`` times the scaling, top-k of
the L2-normalised projections, softmax / tau, an inference gate only when the threshold is > 0.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from rankwise import MoRAMConfig, get_model, load_model
from rankwise.adapters import moram as moram_module
from rankwise.adapters.moram import MoRAMLinear
from rankwise.errors import ConfigError


def official_forward(x, W, b, old_A, old_B, new_A, new_B, scale, topk, tau, thresh, training):
    """float64, one formula for all tokens: y = W x + b + (p * w) [old_B, scale * new_B]^T."""
    x, W, b = x.double(), W.double(), b.double()
    A = new_A.double() if old_A is None else torch.cat([old_A.double(), new_A.double()])
    B_new = new_B.double() * scale
    B = B_new if old_B is None else torch.cat([old_B.double(), B_new], dim=1)
    p = x @ A.t()
    s = torch.nn.functional.normalize(p, dim=-1)
    k = min(max(topk, 2), s.shape[-1])
    vals, idx = s.topk(k, dim=-1)
    logits = torch.full_like(s, float("-inf")).scatter(-1, idx, vals)
    w = torch.softmax(logits / tau, dim=-1)
    if not training and thresh > 0:
        w = w * (s >= thresh)
    return x @ W.t() + b + (p * w) @ B.t()


def _layer(seed=0, **config):
    torch.manual_seed(seed)
    config = {"r": 4, "tau": 0.2, "delta": 0.0, "target_modules": ["0"], **config}
    model = get_model(nn.Sequential(nn.Linear(6, 5)), MoRAMConfig(**config))
    return model, model.adapter_layers()["0"]


def _train_values(layer: MoRAMLinear, seed: int) -> None:
    """Stand-in for training: give the live atoms random keys and values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g))
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))


# -- item 4: delta <= 0 switches pruning off ----------------------------------------------------------
@pytest.mark.parametrize("delta", [0.0, -0.3])
def test_delta_at_or_below_zero_prunes_nothing(delta):
    model, layer = _layer(delta=delta, top_k=3)
    for t in range(2):
        model.begin_task(f"t{t}")
        _train_values(layer, t)
        model.end_task()
    model.eval()
    x = torch.randn(64, 6)
    A, B = layer.bank_A, layer.bank_B
    s = torch.nn.functional.normalize(x @ A.t(), dim=-1)
    assert (s.topk(3, dim=-1).values < 0).any()  # negative scores among the chosen atoms: not vacuous
    W, b = layer.base_layer.weight, layer.base_layer.bias
    unpruned = official_forward(x, W, b, None, None, A, B, 1.0, 3, 0.2, 0.0, training=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), unpruned, rtol=1e-5, atol=1e-5)
    # a positive delta still prunes: the same input gives a different output
    model.set_inference_options(delta=0.2)
    with torch.no_grad():
        assert not torch.allclose(model(x).double(), unpruned, rtol=1e-5, atol=1e-5)


# -- item 10: the official-TRACE switches ---------------------------------------------------------------
def test_compat_official_trace_sets_the_three_switches_and_explicit_fields_win():
    cfg = MoRAMConfig(compat="official_trace")
    assert (cfg.frozen_values, cfg.fresh_atoms, cfg.keep_optimizer) == ("unscaled", "end_task", True)
    cfg = MoRAMConfig()
    assert (cfg.frozen_values, cfg.fresh_atoms, cfg.keep_optimizer) == ("scaled", "begin_task", False)
    cfg = MoRAMConfig(compat="official_trace", frozen_values="scaled", keep_optimizer=False)
    assert (cfg.frozen_values, cfg.fresh_atoms, cfg.keep_optimizer) == ("scaled", "end_task", False)
    assert MoRAMConfig(**{k: v for k, v in cfg.to_dict().items() if k != "method"}) == cfg
    for field, value in [
        ("compat", "official"),
        ("frozen_values", "raw"),
        ("fresh_atoms", "later"),
        ("keep_optimizer", "yes"),
    ]:
        with pytest.raises(ConfigError, match=field):
            MoRAMConfig(**{field: value})


def test_unscaled_frozen_values_halve_old_atoms_at_scale_two():
    x = torch.randn(32, 6)
    outputs = {}
    for mode in ("scaled", "unscaled"):
        model, layer = _layer(lora_alpha=8, frozen_values=mode)  # scaling 8 / 4 = 2
        model.begin_task("t0")
        _train_values(layer, 0)
        model.eval()
        with torch.no_grad():
            trained = layer.delta(x)
            raw_A, raw_B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
        model.end_task()
        with torch.no_grad():
            outputs[mode] = layer.delta(x)
        stored = raw_B * (2.0 if mode == "scaled" else 1.0)
        torch.testing.assert_close(layer.bank_B, stored, rtol=0, atol=0)
        assert layer.bank_A.equal(raw_A)
    torch.testing.assert_close(outputs["scaled"], trained, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outputs["unscaled"], trained / 2, rtol=1e-6, atol=1e-6)


def test_official_trace_layer_matches_the_official_forward_over_three_tasks():
    """compat='official_trace': after each task the frozen values are raw, fresh atoms (kaiming A, B = 0)
    sit beside the bank and are routed; the next task trains those same atoms."""
    model, layer = _layer(lora_alpha=8, compat="official_trace", top_k=4, delta=0.1, tau=0.05)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    x = torch.randn(40, 6)
    old_A = old_B = None
    for t in range(3):
        if t:
            fresh = layer.lora_A.detach().clone()
        model.begin_task(f"t{t}")
        if t:
            assert layer.lora_A.detach().equal(fresh)  # trains the atoms drawn at the last end_task
        _train_values(layer, t)
        new_A, new_B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
        model.train()
        with torch.no_grad():
            expected = official_forward(x, W, b, old_A, old_B, new_A, new_B, 2.0, 4, 0.05, 0.1, True)
            torch.testing.assert_close(model(x).double(), expected, rtol=1e-5, atol=1e-5)
        model.end_task()
        old_A = new_A if old_A is None else torch.cat([old_A, new_A])
        old_B = new_B if old_B is None else torch.cat([old_B, new_B], dim=1)  # official: stored unscaled
        assert layer.lora_A is not None and layer.lora_B.abs().sum() == 0 and layer.num_atoms == 4 * (t + 2)
        model.eval()
        with torch.no_grad():
            fresh_A, fresh_B = layer.lora_A.detach(), layer.lora_B.detach()
            expected = official_forward(x, W, b, old_A, old_B, fresh_A, fresh_B, 2.0, 4, 0.05, 0.1, False)
            torch.testing.assert_close(model(x).double(), expected, rtol=1e-5, atol=1e-5)
            # the fresh atoms take part in routing: without them the output is different
            bank_only = official_forward(x, W, b, None, None, old_A, old_B, 1.0, 4, 0.05, 0.1, False)
            assert not torch.allclose(expected, bank_only, rtol=1e-4, atol=1e-4)


def test_official_trace_save_load_is_bit_identical_between_and_within_tasks(tmp_path):
    def base():
        torch.manual_seed(7)
        return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 5))

    config = {"r": 3, "lora_alpha": 6, "compat": "official_trace", "target_modules": ["0", "2"]}
    model = get_model(base(), MoRAMConfig(**config))
    for t in range(2):
        model.begin_task(f"t{t}")
        for layer in model.adapter_layers().values():
            _train_values(layer, t)
        model.end_task()
    x = torch.randn(9, 6)
    model.eval()
    model.save_pretrained(tmp_path / "between")
    loaded = load_model(base(), tmp_path / "between").eval()
    with torch.no_grad():
        assert model(x).equal(loaded(x))
    assert loaded.config == model.config
    for name, layer in model.adapter_layers().items():
        other = loaded.adapter_layers()[name]
        assert other.lora_A.equal(layer.lora_A) and other.lora_B.equal(layer.lora_B) and not other.task_active
    loaded.begin_task("t2")  # trains the loaded fresh atoms, as the uninterrupted model would
    model.begin_task("t2")
    for a, b in zip(model.trainable_parameters(), loaded.trainable_parameters()):
        assert a.equal(b)
    model.save_pretrained(tmp_path / "within")
    again = load_model(base(), tmp_path / "within").eval()
    with torch.no_grad():
        assert model(x).equal(again(x))
    assert again.current_task == "t2" and all(layer.task_active for layer in again.adapter_layers().values())


# -- inference options on a trained / loaded model --------------------------------------------------------
def test_set_inference_options_equals_a_model_built_with_them(tmp_path):
    model, layer = _layer(r=4, top_k=4, tau=0.2, delta=0.3)
    for t in range(2):
        model.begin_task(f"t{t}")
        _train_values(layer, t)
        model.end_task()
    model.save_pretrained(tmp_path / "a")
    torch.manual_seed(0)
    loaded = load_model(nn.Sequential(nn.Linear(6, 5)), tmp_path / "a").eval()
    x = torch.randn(30, 6)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    loaded.set_inference_options(top_k=6, tau=0.05, delta=0.0)
    expected = official_forward(x, W, b, None, None, layer.bank_A, layer.bank_B, 1.0, 6, 0.05, 0.0, False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert (loaded.config.top_k, loaded.config.tau, loaded.config.delta) == (6, 0.05, 0.0)
    loaded.set_inference_options(top_k=None)  # None = r; the others stay
    assert loaded.config.budget == 4 and loaded.config.tau == 0.05
    loaded.save_pretrained(tmp_path / "b")  # the new options travel with the adapter
    assert load_model(nn.Sequential(nn.Linear(6, 5)), tmp_path / "b").config == loaded.config


@pytest.mark.parametrize("field,value", [("top_k", 0), ("top_k", 2.5), ("tau", 0.0), ("delta", 1.5)])
def test_set_inference_options_rejects_bad_values_and_changes_nothing(field, value):
    model, layer = _layer(top_k=3, tau=0.2, delta=0.1)
    with pytest.raises(ConfigError, match=field):
        model.set_inference_options(**{field: value})
    assert (layer.budget, layer.tau, layer.delta_threshold) == (3, 0.2, 0.1)
    assert (model.config.top_k, model.config.tau, model.config.delta) == (3, 0.2, 0.1)


def test_set_inference_options_is_moram_only():
    from rankwise import CoDyRAConfig

    model = get_model(nn.Sequential(nn.Linear(6, 5)), CoDyRAConfig(r=2, target_modules=["0"]))
    with pytest.raises(ConfigError, match=r"delta=0.1.*'codyra': it has none; .*moram \(top_k, tau, delta\)"):
        model.set_inference_options(delta=0.1)


def test_top_k_above_the_bank_warns_once():
    moram_module._BUDGET_WARNED.clear()
    model, layer = _layer(r=2, top_k=5)
    model.begin_task("t0")
    x = torch.randn(3, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model(x)
    messages = [str(w.message) for w in caught if "top_k" in str(w.message)]
    assert len(messages) == 1 and "5" in messages[0] and "bank of 2 atoms" in messages[0]
    model.end_task()
    model.begin_task("t1")  # bank 2 + 2 live = 4 < 5: a new size, one more warning
    with pytest.warns(UserWarning, match="bank of 4 atoms"):
        model(x)
