"""CoDyRA's threshold schedule against the reference train loop, in the function and through the engine.

`reference_thresholds` transcribes the control flow of the reference loop (Artificer-AI-Lab/CoDyRA,
models/codyra.py, ``train_model``) independently of rankwise: the threshold index advances *before*
the step, the prox runs *after* ``optimizer.step()`` once past the dense phase.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankwise.adapters.codyra import ramp_interval, threshold_at
from rankwise.config import config_from_dict
from rankwise.engine.build import build_parts
from rankwise.engine.trainer import make_optimizer, make_scheduler, train_task


def reference_thresholds(total_iterations, dense_fraction=0.5, max_kappa=0.005, lambda_num=50):
    """Per 0-based iteration: the threshold the reference prox uses after optimizer.step(), or None."""
    lambdas = np.linspace(0, max_kappa, lambda_num)
    threshold_id = 0
    threshold = lambdas[threshold_id]
    dense_iters = dense_fraction * total_iterations
    lambda_step_iters = int((total_iterations - dense_iters) // lambda_num)
    used = []
    for iteration in range(total_iterations):
        if lambda_step_iters > 0:
            if iteration >= dense_iters and iteration % lambda_step_iters == 0:
                threshold_id += 1
                threshold = lambdas[min(len(lambdas) - 1, threshold_id)]
        # ... scheduler(iteration), forward, loss.backward(), optimizer.step() ...
        used.append(float(threshold) if iteration > dense_iters else None)
    return used


def reference_prox(gate: torch.Tensor, threshold: float) -> None:
    """The reference's three masked updates, in place (dead zone |p| < 2 threshold)."""
    gate[gate > threshold] -= threshold
    gate[gate < -threshold] += threshold
    gate[abs(gate) < threshold] = 0.0


# T: (first 1-based step with a prox, first step at k_max, total shrink = sum of the thresholds).
# T = 500 by hand: prox from iteration 251 (0-based); index 1 at 251..254, then 5 iterations at each
# of 2..48, then 10 at 49 -> (4 + 5 * 1175 + 10 * 49) k_max / 49 = 6369 * 0.005 / 49 = 0.64990.
TABLE = {
    100: (52, 99, 0.129898),
    300: (152, 295, 0.389898),
    500: (252, 491, 0.649898),
    1000: (502, 981, 1.299898),
}


@pytest.mark.parametrize("total", sorted(TABLE))
def test_threshold_per_iteration_equals_the_reference_loop(total):
    reference = reference_thresholds(total)
    ours = [threshold_at(it, total) for it in range(1, total + 1)]  # step it = reference iteration it - 1
    assert ours == reference  # exact: same None pattern, same floats (linspace rounding)
    first_prox, first_k_max, shrink = TABLE[total]
    assert next(it for it, k in enumerate(ours, 1) if k is not None) == first_prox
    assert next(it for it, k in enumerate(ours, 1) if k == 0.005) == first_k_max
    assert sum(k for k in ours if k is not None) == pytest.approx(shrink, abs=1e-6)


def test_t500_total_shrink_is_0650_and_k_max_at_491():
    ks = [threshold_at(it, 500) for it in range(1, 501)]
    assert sum(k or 0.0 for k in ks) == pytest.approx(0.650, abs=5e-4)  # 0.630 with the old ramp
    assert ks[490] == 0.005 and ks[489] < 0.005  # step 491 (0-based 490) first at k_max; old: 495
    assert ks[250] is None and ks[251] == pytest.approx(0.005 / 49)  # no prox at step 251; old: k = 0


@pytest.mark.parametrize(
    "total,dense_fraction,ramp_steps",
    [(101, 0.5, 50), (257, 0.3, 50), (311, 0.5, 7), (999, 0.75, 50), (400, 0.0, 10), (123, 0.5, 2)],
)
def test_other_settings_follow_the_reference_loop(total, dense_fraction, ramp_steps):
    assert ramp_interval(total, dense_fraction, ramp_steps) >= 1
    reference = reference_thresholds(total, dense_fraction, 0.02, ramp_steps)
    ours = [threshold_at(it, total, dense_fraction, 0.02, ramp_steps) for it in range(1, total + 1)]
    assert ours == reference


def test_short_tasks_keep_the_rankwise_ramp():
    """T < 100: the reference never advances its threshold (interval 0) and never prunes; rankwise ramps."""
    assert ramp_interval(99) == 0
    assert all(k in (None, 0.0) for k in reference_thresholds(99))  # a threshold of 0 changes nothing
    ks = [threshold_at(it, 20) for it in range(1, 21)]
    assert ks[:10] == [None] * 10  # dense through step int(0.5 T)
    # k = k_max * min((it - 10) // interval, 49) / 49 with interval = max(1, 10 // 50) = 1
    assert ks[10:] == [pytest.approx(0.005 * s / 49) for s in range(1, 11)]
    assert threshold_at(97, 99) == pytest.approx(0.005 * 48 / 49) and threshold_at(98, 99) == 0.005


def test_single_ramp_step_jumps_to_k_max():
    """ramp_steps = 1: the reference's linspace(0, k_max, 1) = [0] never prunes; rankwise uses k_max at once."""
    assert all(k in (None, 0.0) for k in reference_thresholds(500, 0.5, 0.005, 1))
    assert threshold_at(250, 500, ramp_steps=1) is None and threshold_at(251, 500, ramp_steps=1) == 0.005


def _toy_codyra_parts(iterations: int, k_max: float):
    config = config_from_dict(
        {
            "name": "schedule",
            "seed": 5,
            "device": "cpu",
            "method": {"name": "codyra", "r": 8, "k_max": k_max},
            "backbone": {"name": "toy"},
            "scenario": {"name": "synthetic", "num_tasks": 1, "train_per_class": 8, "test_per_class": 2},
            "train": {"iterations": iterations, "batch_size": 8, "lr": 1e-2},
        }
    )
    return config, build_parts(config)


def test_engine_prox_follows_the_optimizer_step_with_the_reference_threshold():
    """Through RankwiseModel and the engine's train_task: at every step, gates after the prox =
    reference_prox(gates right after optimizer.step(), reference threshold of iteration it - 1), and the
    k reported in StepLog.extra is that threshold."""
    total = 100
    config, parts = _toy_codyra_parts(total, k_max=0.05)
    model, task = parts.model, parts.tasks[0]
    model.begin_task(task.name)
    gates = [layer.gate for layer in model.adapter_layers().values()]
    optimizer = make_optimizer(model.trainable_parameters(), config.train)
    after_optimizer: list[list[torch.Tensor]] = []
    optimizer.register_step_post_hook(lambda *_: after_optimizer.append([g.detach().clone() for g in gates]))
    logs, after_prox = [], []

    def on_step(log):
        logs.append(log)
        after_prox.append([g.detach().clone() for g in gates])

    train_task(
        backbone=parts.backbone,
        model=model,
        task=task,
        task_index=0,
        cfg=config.train,
        seed=config.seed,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, config.train),
        start_iteration=0,
        after_step=model.after_optimizer_step,
        on_step=on_step,
        device=parts.device,
    )
    reference = reference_thresholds(total, max_kappa=0.05)
    assert [log.iteration for log in logs] == list(range(1, total + 1))
    assert [log.extra["k"] for log in logs] == reference
    for i, k in enumerate(reference):
        for stepped, proxed in zip(after_optimizer[i], after_prox[i]):
            expected = stepped.clone()
            if k is not None:
                reference_prox(expected, k)
            torch.testing.assert_close(proxed, expected, rtol=0, atol=0)
    dead = sum(int((g == 0).sum()) for g in after_prox[-1])
    assert 0 < dead < sum(g.numel() for g in gates)  # the check is not vacuous: some ranks died, not all


def test_short_runs_keep_the_rankwise_ramp_whatever_ramp_steps_is():
    """Below T = 100 the rankwise ramp holds even when ramp_steps would give the reference loop a
    non-zero interval: text-mtil's CoDyRA preset (T = 30, ramp_steps 15, k_max 0.075) prunes from step
    16 with k_max/14 and adds k_max/14 per step, as when its published row was measured."""
    from rankwise.adapters.codyra import threshold_at

    got = [threshold_at(it, 30, k_max=0.075, ramp_steps=15) for it in range(1, 31)]
    expected = [None] * 15 + [0.075 * min(it - 15, 14) / 14 for it in range(16, 31)]
    assert got == expected
