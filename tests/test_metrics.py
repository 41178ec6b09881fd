"""Metrics on small matrices whose values were worked out by hand."""

import math

import numpy as np
import pytest

from rankwise import metrics
from rankwise.errors import ConfigError

# zero-shot row, then rows after tasks 1, 2, 3
MATRIX = [
    [10.0, 20.0, 30.0],
    [80.0, 30.0, 20.0],
    [85.0, 90.0, 40.0],
    [60.0, 85.0, 95.0],
]


def test_three_task_matrix_by_hand():
    m = metrics.summarize(MATRIX)
    # Transfer: column 2 -> 30 ; column 3 -> (20 + 40) / 2 = 30 ; mean 30
    assert m["transfer"] == pytest.approx(30.0)
    # Average: (80+30+20+85+90+40+60+85+95) / 9 = 585 / 9
    assert m["average"] == pytest.approx(585.0 / 9.0)
    # Last = OP: (60 + 85 + 95) / 3 = 80
    assert m["last"] == pytest.approx(80.0)
    assert m["op"] == pytest.approx(80.0)
    # BWT: ((60 - 80) + (85 - 90)) / 2 = -12.5
    assert m["bwt"] == pytest.approx(-12.5)
    # Forgetting: task 1 best earlier 85 -> 25 ; task 2 best earlier 90 -> 5 ; mean 15
    assert m["forgetting"] == pytest.approx(15.0)
    assert m["zero_shot"] == pytest.approx(20.0)


def test_transfer_ignores_zero_shot_row_and_diagonal():
    changed = [row[:] for row in MATRIX]
    changed[0] = [99.0, 99.0, 99.0]  # zero-shot row: not part of Transfer
    changed[2][1] = 0.0  # diagonal entry acc[2, 2]: not part of Transfer
    changed[3][0] = 0.0  # lower triangle
    assert metrics.summarize(changed)["transfer"] == pytest.approx(30.0)


def test_two_tasks_and_without_zero_shot_row():
    acc = np.array([[50.0, 10.0], [40.0, 70.0]])
    m = metrics.summarize(acc, with_zero_shot=False)
    assert m["transfer"] == pytest.approx(10.0)
    assert m["average"] == pytest.approx(42.5)
    assert m["last"] == pytest.approx(55.0)
    assert m["bwt"] == pytest.approx(-10.0)
    assert m["forgetting"] == pytest.approx(10.0)
    assert "zero_shot" not in m


def test_single_task_has_no_transfer_or_bwt():
    m = metrics.summarize([[5.0], [75.0]])
    assert m["transfer"] is None and m["bwt"] is None and m["forgetting"] is None
    assert m["average"] == m["last"] == 75.0


def test_positive_backward_transfer_gives_negative_forgetting():
    acc = [[0, 0], [40.0, 0.0], [60.0, 50.0]]
    m = metrics.summarize(acc)
    assert m["bwt"] == pytest.approx(20.0)
    assert m["forgetting"] == pytest.approx(-20.0)


@pytest.mark.parametrize(
    "bad",
    [[[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], [[0.0, 0.0], [1.0, math.nan], [2.0, 3.0]], np.zeros((1, 0))],
)
def test_malformed_matrix_is_rejected(bad):
    with pytest.raises(ConfigError, match="accuracy_matrix"):
        metrics.summarize(bad)


# -- TRACE's BWT (collect_results.py) next to the standard one ---------------------------------------
def test_bwt_trace_by_hand_on_a_matrix_with_a_gain():
    # rows after tasks 1..3; task 1 gains (70 -> 75), task 2 drops (90 -> 60), task 3 is the last
    acc = [[0.0, 0.0, 0.0], [70.0, 10.0, 5.0], [72.0, 90.0, 8.0], [75.0, 60.0, 50.0]]
    m = metrics.summarize(acc)
    # standard: ((75 - 70) + (60 - 90)) / 2 = -12.5 ; TRACE: (min(5, 0) + min(-30, 0) + 0) / 3 = -10
    assert m["bwt"] == pytest.approx(-12.5)
    assert m["bwt_trace"] == pytest.approx(-10.0)
    # the gain is clipped: strictly below (T-1)/T * BWT = 2/3 * -12.5
    assert m["bwt_trace"] < 2.0 / 3.0 * m["bwt"]


def test_bwt_trace_equals_scaled_bwt_when_nothing_improves():
    m = metrics.summarize(MATRIX)  # both earlier tasks drop: 80 -> 60, 90 -> 85
    assert m["bwt_trace"] == pytest.approx((-20.0 - 5.0 + 0.0) / 3.0)
    assert m["bwt_trace"] == pytest.approx(2.0 / 3.0 * m["bwt"])


def test_bwt_trace_single_task_and_pure_gains_are_zero():
    assert metrics.summarize([[5.0], [75.0]])["bwt_trace"] == 0.0
    m = metrics.summarize([[0, 0], [40.0, 0.0], [60.0, 50.0]])
    assert m["bwt"] == pytest.approx(20.0) and m["bwt_trace"] == 0.0
