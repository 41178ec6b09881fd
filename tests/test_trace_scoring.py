"""TRACE's official scoring rules on hand-worked examples written in the official data format.

Each expected value is worked out by hand from the official rule (TRACE/metrics.py, evaluations/,
inference/infer_multi_command.py); the comments show the working.
"""

from __future__ import annotations

import difflib

import pytest

from rankwise.scenarios.trace import TRACE_METRICS
from rankwise.scoring import SCORERS, rouge_l, scienceqa_accuracy
from rankwise.trace_scoring import (
    fuzz_ratio,
    math_equal,
    normalize_choice,
    normalize_math,
    numglue_accuracy,
    numglue_answer,
    parse_number,
    prefix_match,
    py150_postprocess,
    py150_similarity,
    py150_similarity_difflib,
    trace_accuracy,
    trace_choice_accuracy,
    trace_rouge_l,
)

# ScienceQA answers in the official format: the option letter, a newline, then the reasoning
SCIENCEQA_GOLD = [
    "B\nA compound sentence joins two independent clauses with a conjunction such as and or but.",
    "A\nMagnets attract when opposite poles face each other.",
    "C\nPlants make their own food from sunlight, so they are producers.",
]


def test_scienceqa_official_format_all_right_scores_100():
    # regression: the former rule looked for "Answer: X" and scored these 0
    preds = [
        "B\nA compound sentence is made of two independent clauses.",
        "A",
        "  C\nBecause plants are producers.",
    ]
    assert scienceqa_accuracy(preds, SCIENCEQA_GOLD) == 100.0


def test_scienceqa_letter_rule_edge_cases():
    # "b" (case), "" ("N/A"), "Answer: B" (first char "A") are wrong; "C." is right ("C" is its prefix)
    preds = ["b\nBecause ...", "", "Answer: B"]
    assert scienceqa_accuracy(preds, SCIENCEQA_GOLD) == 0.0
    assert scienceqa_accuracy(["C. Because", "A"], [SCIENCEQA_GOLD[2], SCIENCEQA_GOLD[1]]) == 100.0


def test_prefix_rule_cuts_the_prediction_to_the_answer_length():
    assert prefix_match("dovish stance", "dovish") and prefix_match("  B\n", "B")
    assert prefix_match("60", "6")  # the official quirk: a longer number starting with the answer
    assert not prefix_match("6", "60") and not prefix_match("b", "B") and not prefix_match("", "B")
    assert not prefix_match("anything", "")  # empty answers never match
    assert not prefix_match("B", " B")  # the answer is not stripped
    # 2 of 5 right: "dovish stance", " B"
    preds = ["dovish stance", " B", "b", "", "Bx"]
    assert trace_accuracy(preds, ["dovish", "B", "B", "B", ""]) == pytest.approx(40.0)


def test_choice_normalisation_of_cstance_and_fomc():
    assert normalize_choice("The stance is B.") == "B"  # a standalone letter
    assert normalize_choice("a dovish stance") == "A"  # any case, the first standalone one
    assert normalize_choice("Answer: c") == "C"
    assert normalize_choice("hawkish") == "A"  # no standalone letter: first char in {A,B,C} -> "a"
    assert normalize_choice("dovish") == "dovish"  # none at all: the text
    assert normalize_choice("态度：B") == "B"  # "：" is not a word character: "B" stands alone
    assert normalize_choice("支持B") == "B"  # no word boundary before "B": fallback scan finds it
    # "B" right; "hawkish" -> "A" vs "B" wrong; "dovish" vs "A" wrong
    assert trace_choice_accuracy(["The stance is B.", "hawkish", "dovish"], ["B", "B", "A"]) == pytest.approx(
        100 / 3
    )


def test_numglue_answer_extraction():
    assert numglue_answer("The answer is 12.") == "12."
    assert numglue_answer("1,234 apples") == "234"  # the regex has no thousands separator
    assert numglue_answer("first 3 then -4.5 left") == "-4.5"
    assert numglue_answer("\\boxed{13.00}") == "13" and numglue_answer("\\boxed{13.50}") == "13.50"
    assert numglue_answer("so $\\boxed{\\frac12}$ of it") == "\\frac{1}{2}"
    assert numglue_answer("\\boxed{}") == "\\boxed{}"  # empty box: last number, none -> the text
    assert numglue_answer("Friday") == "Friday"


def test_numglue_normalisation_and_number_parsing():
    assert (
        normalize_math("12.000") == "12" and normalize_math(".5") == "0.5" and normalize_math("50%") == "50"
    )
    assert normalize_math("k = 3") == "3" and normalize_math("3/4") == "\\frac{3}{4}"
    assert normalize_math("\\frac12") == "\\frac{1}{2}" and normalize_math("10^\\circ") == "10"
    assert normalize_math("thousand") == "thous"  # every "and" goes, as in the official parser
    assert normalize_math("Friday.") == "Friday" and normalize_math("  6\n") == "6"
    assert parse_number("1,000") == 1000.0 and parse_number("50%") == 0.5
    assert parse_number("12\\") == pytest.approx(0.12) and parse_number("abc") is None


def test_numglue_equality_rules():
    assert math_equal("12.", "12") and math_equal("13.5001", "13.5")  # rel_tol 1e-4
    assert not math_equal("13.6", "13.5")
    assert math_equal("0.12", "12") and math_equal("1200", "12")  # r / 100 and 100 r also count
    assert math_equal("friday", "Friday") and not math_equal("", "6")
    assert math_equal("[2]", "2") and math_equal("x=5", "5")
    # right: "6", "12." for 12, "0.135" for 13.5 (percent), "Friday"; wrong: "7", "" -> 4 / 6
    preds = ["There are 6 eyes.", "12.", "0.135", "Friday", "7", ""]
    golds = ["6", "12", "13.5", "Friday", "6", "6"]
    assert numglue_accuracy(preds, golds) == pytest.approx(400 / 6)


def test_trace_rouge_l_is_the_rouge_package_summary_level_f():
    # hyp sentences [the cat sat], [on the mat]; ref [the cat is on the mat]
    # LCS words: {the, cat} and {on, the, mat} -> union 4; distinct words m = n = 5 -> P = R = F = 0.8
    assert trace_rouge_l(["the cat sat. on the mat"], ["the cat is on the mat"]) == pytest.approx(
        80.0, abs=1e-5
    )
    # rouge-score (our rouge_l) counts tokens, not sentences: LCS 5 of 6 -> 83.3
    assert rouge_l(["the cat sat. on the mat"], ["the cat is on the mat"]) == pytest.approx(500 / 6)
    # distinct, case-sensitive words: hyp {The, the} n = 2, ref {the} m = 1, union {the}: F = 2/3
    assert trace_rouge_l(["The the the"], ["the"]) == pytest.approx(200 / 3, abs=1e-5)
    # back-tracking moves left on ties: LCS("a b", "b a") is {b}, LCS("a b", "a") is {a} -> union 2: F = 1
    assert trace_rouge_l(["b a. a"], ["a b"]) == pytest.approx(100.0, abs=1e-5)
    # empty prediction or answer, or an answer with no sentence ("..."), add 0 but count
    assert trace_rouge_l(["", "x", "y"], ["a", "", "..."]) == 0.0
    assert trace_rouge_l(["a b", ""], ["a b", "c"]) == pytest.approx(50.0, abs=1e-5)


def test_py150_placeholder_postprocessing():
    code = "x = <NUM_LIT> + <NUM_LIT:200> ; s = <STR_LIT:hello> + <STR_LIT> + <CHAR_LIT> <EOL>"
    assert py150_postprocess(code) == "x = 0 + 200 ; s = hello +  +  <EOL>"
    assert py150_postprocess("f(<STR_LIT:a>b>)") == "f(ab>)"  # the body ends at the first ">"
    assert py150_postprocess("<NUM_LIT:1> <NUM_LIT:1>") == "1 1"  # every occurrence replaced


def test_py150_similarity_rounds_each_fuzz_ratio():
    # "return x" / "return y": LCS 7 of 16 chars -> 87.5 -> round half to even -> 88
    assert fuzz_ratio("return x", "return y") == 88
    # "a" / "a" + 14 x: 2 / 16 = 12.5 -> 12 (not 13)
    assert fuzz_ratio("a", "a" + "x" * 14) == 12 and fuzz_ratio("a", "a" + "x" * 14, "difflib") == 12
    assert fuzz_ratio("", "") == 100 and fuzz_ratio("", "a") == 0
    # placeholders first: "<NUM_LIT:200>" == "200"; an empty side ("<STR_LIT>" -> "") adds 0
    preds = ["return build ( 200 )", "return x", "", "y"]
    golds = ["return build ( <NUM_LIT:200> )", "return y", "z", "<STR_LIT>"]
    assert py150_similarity(preds, golds) == pytest.approx((100 + 88) / 4)
    ratio = difflib.SequenceMatcher(None, "kitten", "sitting").ratio()  # 8/13 -> 61.5 -> 62
    assert py150_similarity_difflib(["kitten"], ["sitting"]) == round(100 * ratio) == 62


def test_official_metric_defaults_per_task_are_registered_scorers():
    assert TRACE_METRICS == {
        "C-STANCE": "trace_choice_accuracy",
        "FOMC": "trace_choice_accuracy",
        "ScienceQA": "scienceqa_accuracy",
        "NumGLUE-cm": "numglue_accuracy",
        "NumGLUE-ds": "numglue_accuracy",
        "MeetingBank": "trace_rouge_l",
        "20Minuten": "sari",
        "Py150": "py150_similarity",
    }
    assert set(TRACE_METRICS.values()) <= set(SCORERS)


def test_trace_rouge_l_newline_quirk_costs_an_exact_copy_that_ends_with_a_period():
    # the official call appends "\n" to a prediction without one; "fees.\n" then splits into the
    # sentences ["AN ORDINANCE relating to fees", ""]: the empty sentence adds the word "", so
    # n = 6 distinct words, m = 5, |U| = 5 -> F = 2 (5/6)(1) / (11/6) = 10/11 for an exact copy
    gold = "AN ORDINANCE relating to fees."
    assert trace_rouge_l([gold], [gold]) == pytest.approx(1000 / 11, abs=1e-5)
    assert trace_rouge_l([gold + "\n"], [gold]) == pytest.approx(1000 / 11, abs=1e-5)
    assert trace_rouge_l(["AN ORDINANCE relating to fees"], [gold]) == pytest.approx(100.0, abs=1e-5)


def test_trace_scoring_stands_below_scoring():
    """No import circle: `rankwise.scoring` imports `rankwise.trace_scoring` (to register the TRACE
    scorers), so trace_scoring, even scoring Py150 with the LCS-based ratio, never imports scoring."""
    import subprocess
    import sys

    code = (
        "import sys; from rankwise.trace_scoring import fuzz_ratio; "
        "assert fuzz_ratio('abcde', 'abxde') == 80; "  # 2 * LCS 4 / 10
        "assert 'rankwise.scoring' not in sys.modules, 'trace_scoring imported scoring'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
