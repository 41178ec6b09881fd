"""The training loop reads values from the device only at its sync points (issue 16, item 4).

These tests run the engine on the CPU, record every read of a computed tensor back to the host
(tests/host_reads.py: on a GPU each would make the host wait for the device), and check that a step
which is not a sync point (``train.log_every``, ``train.checkpoint_every``, the task's last step) makes
none.
"""

from __future__ import annotations

import json

import pytest
import torch
from host_reads import HostReads
from toy_helpers import toy_config

from rankwise.adapters import codyra
from rankwise.engine import continual
from rankwise.engine.continual import run_experiment
from rankwise.engine.trainer import StepLog, sync_point


def run_counting(tmp_path, monkeypatch, method: str, **train) -> tuple[list[tuple[int, bool, list[str]]], object]:
    mode = HostReads()
    steps: list[tuple[int, bool, list[str]]] = []
    real_train_task = continual.train_task

    def train_task(**kwargs):
        engine_on_step = kwargs["on_step"]

        def on_step(log: StepLog) -> None:
            steps.append((log.iteration, log.synced, list(mode.reads)))
            mode.reads.clear()
            mode.active = False  # the engine's own logging at sync points is allowed to read
            try:
                engine_on_step(log)
            finally:
                mode.active = True

        mode.active = True
        try:
            return real_train_task(**{**kwargs, "on_step": on_step})
        finally:
            mode.active = False

    monkeypatch.setattr(continual, "train_task", train_task)
    with mode:
        result = run_experiment(toy_config(method, **train), tmp_path / "run", quiet=True)
    return steps, result


@pytest.mark.parametrize("method", ["codyra", "lora", "moram", "olora", "inflora", "moe-lora", "full"])
def test_steps_between_sync_points_read_nothing_from_the_device(tmp_path, monkeypatch, method):
    cfg = toy_config(method, log_every=4, checkpoint_every=10, grad_clip=1.0)
    steps, _ = run_counting(tmp_path, monkeypatch, method, log_every=4, checkpoint_every=10, grad_clip=1.0)
    assert len(steps) == 3 * cfg.train.iterations
    for iteration, synced, reads in steps:
        assert synced == sync_point(iteration, cfg.train)
        if not synced:
            assert reads == [], f"{method}: step {iteration} read {reads} from the device"
    # the sync points do read (the loss once per interval), so the counter sees reads at all
    assert all(reads for iteration, synced, reads in steps if synced)
    synced_steps = [i for i, s, _ in steps[: cfg.train.iterations] if s]
    assert synced_steps == [4, 8, 10, 12, 16, 20]


def test_codyra_prox_reference_is_the_masked_updates_without_reading_the_device():
    gate = torch.tensor([0.30, 0.12, 0.07, 0.05, 0.0, -0.05, -0.07, -0.12, -0.30, 0.1, -0.1])
    expected = gate.clone()
    k = 0.1
    expected[expected > k] -= k  # the reference code's three masked updates, in sequence
    expected[expected < -k] += k
    expected[expected.abs() < k] = 0
    with HostReads() as mode:
        mode.active = True
        codyra.prox_reference(gate, k)
    assert mode.reads == []
    assert torch.equal(gate, expected)
    # values in (k, 2k) are shrunk below k and then zeroed: the dead zone is |g| < 2k
    assert gate[1:8].eq(0).all() and gate[0] > 0 and gate[8] < 0
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for k in (1e-4, 3e-3, 0.05, 0.5):
            gate = (torch.randn(10_000, generator=generator) * 4 * k).to(dtype)
            gate[:50] = k  # values at the thresholds themselves
            gate[50:100] = -k
            gate[100:150] = 2 * k
            expected = gate.clone()
            expected[expected > k] -= k
            expected[expected < -k] += k
            expected[expected.abs() < k] = 0
            codyra.prox_reference(gate, k)
            assert torch.equal(gate, expected), (dtype, k)  # the same bits


@pytest.mark.parametrize("accumulation", [1, 2])
def test_logged_loss_is_that_steps_loss(tmp_path, monkeypatch, accumulation):
    """The loss logged at a sync point is the step's own: its micro-batch losses (summed in float32)
    divided by the accumulation and added up, recorded here independently at every call of the loss."""
    from rankwise.backbones import toy as toy_backbone

    calls: list[float] = []
    real_loss = toy_backbone.ToyBackbone.loss

    def loss(self, batch, task):
        value = real_loss(self, batch, task)
        calls.append(float(value.detach().float().sum()))
        return value

    monkeypatch.setattr(toy_backbone.ToyBackbone, "loss", loss)
    result = run_experiment(
        toy_config("lora", log_every=3, checkpoint_every=100, grad_accumulation=accumulation, grad_clip=1.0),
        tmp_path / "run",
        quiet=True,
    )
    events = [json.loads(x) for x in (result.run_dir / "events.jsonl").read_text().splitlines()]
    logged = [e for e in events if e["event"] == "step" and e["task"] == 1]
    assert [e["iteration"] for e in logged] == [3, 6, 9, 12, 15, 18, 20]
    for event in logged:
        micro = calls[(event["iteration"] - 1) * accumulation : event["iteration"] * accumulation]
        expected = 0.0
        for value in micro:
            expected += value / accumulation
        assert event["loss"] == expected
        assert event["grad_norm"] > 0 and event["examples_per_s"] > 0
