"""Per-item scores written by the engine and the paired bootstrap over seeds and items (rankwise.paired)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rankwise.config import load_config
from rankwise.engine.continual import run_experiment
from rankwise.errors import ConfigError, DataError
from rankwise.metrics import summarize
from rankwise.paired import format_difference, holm, linear_coefficients, load_item_scores, paired_bootstrap


def test_linear_coefficients_by_hand_for_three_tasks():
    # rows: 0 zero-shot, 1..3 after task i; columns: tasks 1..3 (0-based 0..2)
    transfer = np.zeros((4, 3))
    transfer[1, 1] = 1 / 2  # task 2 before it is learned: after task 1 only
    transfer[1, 2] = transfer[2, 2] = 1 / 4  # task 3: mean over after tasks 1 and 2, then mean over j
    assert np.allclose(linear_coefficients("transfer", 3), transfer)
    average = np.zeros((4, 3))
    average[1:] = 1 / 9
    assert np.allclose(linear_coefficients("average", 3), average)
    last = np.zeros((4, 3))
    last[3] = 1 / 3
    assert np.allclose(linear_coefficients("last", 3), last)
    bwt = np.zeros((4, 3))
    bwt[3, 0] = bwt[3, 1] = 1 / 2
    bwt[1, 0] = bwt[2, 1] = -1 / 2
    assert np.allclose(linear_coefficients("bwt", 3), bwt)
    with pytest.raises(ConfigError, match="metric.*forgetting.*linear"):
        linear_coefficients("forgetting", 3)


def _run(rng, n_tasks, n_items, p):
    """Per-task (T + 1, n) 0/100 scores drawn with success probability p[row, task]."""
    return [np.where(rng.random((n_tasks + 1, n)) < p[:, [t]], 100.0, 0.0) for t, n in enumerate(n_items)]


def test_observed_difference_is_the_metric_difference_of_the_cell_means():
    rng = np.random.default_rng(0)
    n_items = [30, 45, 20]
    runs_a = [_run(rng, 3, n_items, rng.random((4, 3))) for _ in range(3)]
    runs_b = [_run(rng, 3, n_items, rng.random((4, 3))) for _ in range(3)]

    def matrix(run):
        return np.stack([scores.mean(axis=1) for scores in run], axis=1)  # (T + 1, T) cell means

    for metric in ("transfer", "average", "last", "bwt"):
        expected = np.mean(
            [summarize(matrix(a))[metric] - summarize(matrix(b))[metric] for a, b in zip(runs_a, runs_b)]
        )
        result = paired_bootstrap(runs_a, runs_b, metric, n_boot=200)
        assert result.difference == pytest.approx(expected, abs=1e-9)
        assert result.low <= result.high and result.n_seeds == 3


def test_identical_methods_differ_by_zero_and_a_clear_gap_is_significant():
    rng = np.random.default_rng(1)
    n_items = [200, 200]
    same = [_run(rng, 2, n_items, np.full((3, 2), 0.6)) for _ in range(3)]
    result = paired_bootstrap(same, same, "last", n_boot=500)
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)
    better = [_run(rng, 2, n_items, np.full((3, 2), 0.8)) for _ in range(3)]
    worse = [_run(rng, 2, n_items, np.full((3, 2), 0.5)) for _ in range(3)]
    gap = paired_bootstrap(better, worse, "last", n_boot=1000)
    assert 22 < gap.difference < 38 and gap.low > 0 and gap.p_value < 0.01
    if gap.p_value == 0:  # no draw at or below zero: shown as the test's resolution, not as p = 0
        assert format_difference(gap).endswith(" p<0.0020")
    assert format_difference(result) == "+0.00 [+0.00, +0.00] p=1.000"


def test_no_difference_is_rarely_called_significant():
    """Both methods draw from the same distribution: about 5% of the tests reject at 0.05, not more
    than three times that (a test that ignores the item noise would reject far more often)."""
    rng = np.random.default_rng(2)
    rejections = 0
    trials = 60
    for trial in range(trials):
        a = [_run(rng, 2, [80, 80], np.full((3, 2), 0.7)) for _ in range(3)]
        b = [_run(rng, 2, [80, 80], np.full((3, 2), 0.7)) for _ in range(3)]
        rejections += paired_bootstrap(a, b, "average", n_boot=300, seed=trial).p_value < 0.05
    assert rejections <= 0.15 * trials


def test_mismatched_runs_are_refused():
    rng = np.random.default_rng(3)
    a = [_run(rng, 2, [10, 10], np.full((3, 2), 0.5))]
    b = [_run(rng, 2, [10, 12], np.full((3, 2), 0.5))]
    with pytest.raises(DataError, match="not the same items"):
        paired_bootstrap(a, b, "last")
    with pytest.raises(ConfigError, match="same number"):
        paired_bootstrap(a, a + a, "last")


def test_holm_adjustment_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []
    with pytest.raises(ConfigError, match="p_values"):
        holm([0.1, 1.5])


def test_holm_keeps_the_family_wise_error_rate():
    """20 true null hypotheses a family: raw p < 0.05 somewhere in most families, Holm-adjusted in
    about 5% of them (1 - (1 - 0.05 / 20)^20 = 4.9% for independent tests)."""
    rng = np.random.default_rng(4)
    families = rng.random((2000, 20))
    any_raw = np.mean([(f < 0.05).any() for f in families])
    any_holm = np.mean([min(holm(f)) < 0.05 for f in families])
    assert any_raw > 0.5 and any_holm < 0.065


@pytest.mark.parametrize("preset", ["toy_lora", "toy_zero_shot"])
def test_engine_writes_item_scores_whose_means_are_the_matrix(tmp_path, preset):
    config = load_config(
        str(Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"),
        ["train.iterations=4", "train.checkpoint_every=2", "eval.item_scores=true", f"output.dir={tmp_path / 'run'}"],
    )
    result = run_experiment(config, quiet=True)
    tasks, items = load_item_scores(result.run_dir)
    assert tasks == result.task_names
    cells = np.stack([scores.mean(axis=1) for scores in items], axis=1)
    assert np.allclose(cells, result.accuracy_matrix, atol=1e-9)
    assert all(set(np.unique(scores)) <= {0.0, 100.0} for scores in items)
    record = json.loads((result.run_dir / "item_scores" / "row_001.json").read_text())
    assert record["row"] == 1 and record["after"].startswith(f"after {tasks[0]}")


def test_missing_item_scores_are_named(tmp_path):
    with pytest.raises(DataError, match="eval.item_scores"):
        load_item_scores(tmp_path)


def test_item_scores_average_to_the_scorer_and_are_none_for_other_metrics():
    from rankwise.scoring import SCORERS, item_scores

    predictions, targets = [" Yes", "no", "maybe", "NO "], ["yes", "yes", "maybe", "no"]
    for metric in ("accuracy", "exact_match"):
        scores = item_scores(metric, predictions, targets)
        assert np.mean(scores) == pytest.approx(SCORERS[metric](predictions, targets))
    assert item_scores("exact_match", predictions, targets) == [100.0, 0.0, 100.0, 100.0]
    assert item_scores("accuracy", predictions, targets) == [0.0, 0.0, 100.0, 0.0]
    assert item_scores("rouge_l", predictions, targets) is None
