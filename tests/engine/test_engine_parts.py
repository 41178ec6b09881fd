"""Unit tests of the engine's pieces: toy backbone, synthetic tasks, RNG capture, pickle-free state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rankwise.backbones.toy import ToyBackbone, ToyBackboneConfig
from rankwise.engine import checkpoint as ckpt
from rankwise.engine.device import choose_device, rng_state, seed_everything, set_rng_state
from rankwise.errors import CheckpointError, ConfigError, DataError
from rankwise.scenarios.synthetic import SyntheticConfig, build_scenario
from rankwise.tasks import ClassificationExample


def test_synthetic_tasks_are_seeded_and_shaped():
    cfg = SyntheticConfig(num_tasks=2, classes_per_task=3, train_per_class=5, test_per_class=2, seq_len=6)
    a, b = build_scenario(cfg, 0), build_scenario(cfg, 0)
    assert [t.train for t in a] == [t.train for t in b]
    assert build_scenario(cfg, 1)[0].train != a[0].train
    assert [len(t.train) for t in a] == [15, 15] and [len(t.test) for t in a] == [6, 6]
    assert all(len(ex.input) == 6 and 0 <= ex.label < 3 for t in a for ex in t.train)
    sigs = a[0].info["signatures"]
    assert len({tok for s in sigs for tok in s}) == 9  # disjoint within a task


def test_synthetic_noise_zero_uses_only_signature_tokens():
    task = build_scenario(SyntheticConfig(num_tasks=1, noise=0.0), 0)[0]
    sigs = task.info["signatures"]
    assert all(set(ex.input) <= set(sigs[ex.label]) for ex in task.train)


@pytest.mark.parametrize("field,value", [("vocab_size", 5), ("noise", -0.1), ("classes_per_task", 1)])
def test_synthetic_config_errors(field, value):
    with pytest.raises(ConfigError, match=f"scenario.{field}"):
        SyntheticConfig(**{field: value})


def test_toy_backbone_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = ToyBackbone(ToyBackboneConfig()), ToyBackbone(ToyBackboneConfig())
    assert torch.equal(torch.get_rng_state(), before)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n
    names = {n.rsplit(".", 1)[-1] for n, m in a.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_toy_loss_is_clip_style_both_directions():
    bb = ToyBackbone(ToyBackboneConfig())
    task = build_scenario(SyntheticConfig(num_tasks=1), 0)[0]
    batch = bb.collate(task.train[:12], task, True)
    logits = bb.model(batch["tokens"], batch["class_tokens"])
    y = batch["labels"]
    expected = F.cross_entropy(logits, y)
    terms = []
    for c in y.unique():
        members = (y == c).nonzero().flatten()
        log_p = logits[:, c].log_softmax(0)
        terms.append(-log_p[members].mean())
    expected = expected + torch.stack(terms).mean()
    assert torch.allclose(bb.loss(batch, task), expected, atol=1e-6)


def test_toy_eval_uses_offsets_and_rejects_bad_tokens():
    bb = ToyBackbone(ToyBackboneConfig())
    task = build_scenario(SyntheticConfig(num_tasks=1), 0)[0]
    task.eval_class_names = ["other", *task.class_names]
    task.label_offset = 1
    batch = bb.collate(task.test[:4], task, False)
    assert bb.targets(batch) == [ex.label + 1 for ex in task.test[:4]]
    assert batch["class_tokens"].shape[0] == 5
    with pytest.raises(DataError, match="vocab_size"):
        bb.collate([ClassificationExample(input=(1, 99), label=0)], task, True)


def test_rng_state_round_trip_restores_every_generator():
    seed_everything(5)
    meta, tensors = rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    set_rng_state(meta, tensors)
    second = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_choose_device():
    assert choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device"):
            choose_device("cuda")


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt.save_snapshot(tmp_path / "s", {"note": "x"}, {"optimizer": opt.state_dict()})
    meta, loaded = ckpt.load_snapshot(tmp_path / "s")
    assert meta == {"note": "x"}
    original = opt.state_dict()
    assert loaded["optimizer"]["param_groups"] == original["param_groups"]
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    for k, state in original["state"].items():
        for name, value in state.items():
            assert torch.equal(loaded["optimizer"]["state"][k][name], value)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(loaded["optimizer"])
    with pytest.raises(CheckpointError, match="without pickle"):
        ckpt.flatten(object(), "x", {})
