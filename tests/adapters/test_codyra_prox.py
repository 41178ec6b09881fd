"""CoDyRA's proximal operators, threshold schedule and the rank survival they cause."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rankwise import CoDyRAConfig, get_model
from rankwise.adapters.codyra import prox_reference, prox_soft, threshold_at

K = 0.1
# value, after the reference operator (sequential: -k / +k / zero below k), after soft threshold
TABLE = [
    (0.35, 0.25, 0.25),
    (0.25, 0.15, 0.15),
    (0.2000001, 0.1000001, 0.1000001),
    (0.19, 0.0, 0.09),  # (k, 2k): shrunk below k, then zeroed by the third line
    (0.15, 0.0, 0.05),
    (0.11, 0.0, 0.01),
    (0.1, 0.1, 0.0),  # exactly k: no line touches it (p > k false, |p| < k false)
    (0.05, 0.0, 0.0),
    (0.0, 0.0, 0.0),
    (-0.05, 0.0, 0.0),
    (-0.1, -0.1, 0.0),
    (-0.15, 0.0, -0.05),
    (-0.19, 0.0, -0.09),
    (-0.25, -0.15, -0.15),
    (-0.35, -0.25, -0.25),
]


@pytest.mark.parametrize("operator,column", [(prox_reference, 1), (prox_soft, 2)])
def test_prox_operators_on_a_table(operator, column):
    values = torch.tensor([row[0] for row in TABLE], dtype=torch.float64)
    operator(values, K)
    expected = torch.tensor([row[column] for row in TABLE], dtype=torch.float64)
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-12)


def _survival_run(seed: int, prox: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One 16-rank layer, 500 iterations with small SGD gradients, the paper's schedule."""
    torch.manual_seed(seed)
    model = get_model(nn.Sequential(nn.Linear(8, 8)), CoDyRAConfig(r=16, prox=prox, target_modules=["0"]))
    model.begin_task("t")
    layer = model.adapter_layers()["0"]
    g0 = layer.gate.detach().clone()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-4)
    x = torch.randn(16, 8)
    target = torch.randn(16, 8)
    for it in range(1, 501):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()
        model.after_optimizer_step(it, 500)
    return g0, layer.gate.detach().clone()


def test_about_half_of_16_ranks_survive_the_reference_schedule():
    survivors, dead_g0, alive_g0 = [], [], []
    for seed in range(12):
        g0, g = _survival_run(seed, "reference")
        alive = g != 0
        survivors.append(int(alive.sum()))
        alive_g0 += g0[alive].abs().tolist()
        dead_g0 += g0[~alive].abs().tolist()
    mean = sum(survivors) / len(survivors)
    # total shrink of the reference schedule at T = 500: 0.650 (test_codyra_schedule); the paper reports 8.3 of 16
    shrink = sum(threshold_at(it, 500) or 0.0 for it in range(1, 501))
    assert shrink == pytest.approx(0.650, abs=0.001)
    expected = 16 * math.erfc(shrink / math.sqrt(2))  # P(|N(0,1)| > shrink) * 16 = 8.25
    assert abs(mean - expected) < 1.5, (mean, survivors)
    assert min(alive_g0) > 0.55 and max(dead_g0) < 0.7  # survival is decided by |g0| around 0.6
    print(f"mean surviving ranks {mean:.2f} of 16 (expected {expected:.2f}); per seed {survivors}")


def test_soft_operator_keeps_more_ranks_than_reference():
    g0, ref = _survival_run(3, "reference")
    _, soft = _survival_run(3, "soft")
    assert int((soft != 0).sum()) >= int((ref != 0).sum())


def test_prox_is_explicit_never_inside_forward():
    torch.manual_seed(0)
    model = get_model(
        nn.Sequential(nn.Linear(8, 8)), CoDyRAConfig(r=4, k_max=10.0, ramp_steps=1, target_modules=["0"])
    )
    model.begin_task("t")
    gate = model.adapter_layers()["0"].gate.detach().clone()
    for _ in range(3):
        model(torch.randn(2, 8)).sum().backward()
    torch.testing.assert_close(model.adapter_layers()["0"].gate.detach(), gate)
    assert model.after_optimizer_step(2, 2) == {"k": 10.0}
    assert torch.all(model.adapter_layers()["0"].gate == 0)
