"""Scorers against hand-computed values and independent computations."""

from __future__ import annotations

import difflib
import random

import pytest

from rankwise.errors import DataError
from rankwise.scoring import (
    SCORERS,
    _tokenize_13a,
    accuracy,
    edit_similarity,
    exact_match,
    lcs_length,
    rouge_l,
    sari,
    sari_sentence,
)


def test_registry_keeps_old_names_and_adds_generation_metrics():
    assert {"accuracy", "exact_match", "rouge_l", "edit_similarity", "sari", "scienceqa_accuracy"} <= set(
        SCORERS
    )


def test_accuracy_and_exact_match():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 50.0
    assert exact_match(
        [" Hawkish ", "dovish", "neutral."], ["hawkish", "dovish", "neutral"]
    ) == pytest.approx(200 / 3)


def test_rouge_l_hand_computed():
    # LCS of words (the, cat, on, mat) = 4; P = R = 4/6
    assert rouge_l(["the cat sat on the mat"], ["the cat lay on a mat"]) == pytest.approx(100 * 4 / 6)
    # P = 2/2, R = 2/4 -> F = 2/3
    assert rouge_l(["cat mat"], ["the cat the mat"]) == pytest.approx(100 * 2 / 3)
    assert rouge_l(["", "x y"], ["a b", "x y"]) == pytest.approx(50.0)


def test_rouge_l_keeps_non_ascii_words():
    # tokens [grüße, aus, zürich] vs [grüße, aus, bern]: LCS 2 -> P = R = 2/3; an ASCII-only tokenizer
    # would split "grüße" into "gr", "e" and score differently
    assert rouge_l(["Grüße aus Zürich"], ["grüße aus Bern"]) == pytest.approx(100 * 2 / 3)


def _lcs_dp(a: str, b: str) -> int:
    row = [0] * (len(b) + 1)
    for ca in a:
        prev = 0
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if ca == cb else max(row[j], row[j - 1])
    return row[-1]


def test_lcs_bit_parallel_equals_dynamic_programming():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 70)))
        assert lcs_length(a, b) == _lcs_dp(a, b)


def test_edit_similarity_hand_computed():
    # kitten / sitting: LCS "ittn" = 4 -> 2*4/13
    assert edit_similarity(["kitten"], ["sitting"]) == pytest.approx(100 * 8 / 13)
    # difflib's ratio 2M/T agrees here (fuzzywuzzy without python-Levenshtein uses it)
    assert difflib.SequenceMatcher(None, "kitten", "sitting").ratio() == pytest.approx(8 / 13)
    assert edit_similarity(["x = 1", ""], ["x = 1", ""]) == 100.0
    assert edit_similarity(["abc"], [""]) == 0.0
    assert edit_similarity(["ab", "abcd"], ["ba", "abcd"]) == pytest.approx(100 * (0.5 + 1) / 2)


def test_sari_published_worked_example():
    # the worked example of Hugging Face's SARI metric card (tensor2tensor formula): 26.9536...
    source = "About 95 species are currently accepted ."
    refs = [
        "About 95 species are currently known .",
        "About 95 species are now accepted .",
        "95 species are now accepted .",
    ]
    assert sari(["About 95 you now get in ."], [(source, refs)]) == pytest.approx(
        26.953601953601954, abs=1e-9
    )


def test_sari_hand_computed():
    # identical everything: every F/precision is 1 (0/0 := 1)
    assert sari_sentence("a b", "a b", ["a b"]) == pytest.approx(1.0)
    # source "a b c", output "a", reference "a b":
    # 1-grams keep P=1 R=1/2 F=2/3, del P=1/2 (b wrongly deleted, c rightly), add 1
    # 2-grams keep F=0 (ab not kept), del P=1/2, add 1; 3-grams: keep 1, del 1 (abc), add 1; 4-grams 1
    # keep (2/3+0+1+1)/4 = 2/3, del (1/2+1/2+1+1)/4 = 3/4, add 1 -> (2/3 + 3/4 + 1)/3 = 29/36
    assert sari(["a"], [("a b c", "a b")]) == pytest.approx(100 * 29 / 36)
    # 13a tokenization: punctuation attached to words is split the same way in all three
    assert sari(["Hello, world."], [("Hello, big world.", "hello , world .")]) == pytest.approx(
        sari(["hello , world ."], [("hello , big world .", "hello , world .")])
    )


def test_sari_needs_sources():
    with pytest.raises(DataError, match="source, reference"):
        sari(["a"], ["a"])


def test_sari_two_references_worked_by_hand():
    # source "x y", output "x z", references "x z" and "y z" (2 references: source/output counts x2)
    # 1-grams: kept {x:2}, kept&ref {x:1}, src&ref {x:1, y:1} -> keep P = 1/2, R = 1/2, F = 1/2;
    #          deleted {y:2}, minus ref {y:1} -> {y:1} -> del P = 1/2; added {z}, all {z} -> add F = 1
    # 2-grams: nothing kept (0/0 -> P = R = 1, F = 1); "x y" deleted, not in refs -> del P = 1;
    #          added {"x z"} of ref-only {"x z", "y z"} -> add P = 1, R = 1/2, F = 2/3
    # 3-, 4-grams: empty -> 1, 1, 1
    # keep (1/2 + 3)/4 = 7/8, del (1/2 + 3)/4 = 7/8, add (1 + 2/3 + 2)/4 = 11/12 -> (7/8+7/8+11/12)/3 = 8/9
    assert sari_sentence("x y", "x z", ["x z", "y z"]) == pytest.approx(8 / 9)
    assert sari(["x z"], [("x y", ["x z", "y z"])]) == pytest.approx(800 / 9)


def test_sari_13a_decodes_only_the_four_sacrebleu_entities():
    # sacreBLEU's 13a replaces &quot; &amp; &lt; &gt; only; html.unescape would also turn &#39; into '
    assert _tokenize_13a("It&#39;s &amp; &quot;x&quot;") == 'it & # 39 ; s & " x "'


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_length_mismatch_and_empty_raise(name):
    with pytest.raises(DataError):
        SCORERS[name](["a"], [])
    with pytest.raises(DataError):
        SCORERS[name]([], [])
