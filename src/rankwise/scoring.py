"""Per-task scores of predictions against targets, each in [0, 100].

`SCORERS[task.metric](predictions, targets)` is how the engine scores a task.

Generation metrics (TRACE):

* ``rouge_l``: ROUGE-L F-measure (longest common subsequence of words), via the ``rouge-score``
  library with a Unicode-aware word tokenizer (lower-cased ``\\w+`` runs, so German umlauts survive).
* ``edit_similarity``: ``100 * (1 - indel(a, b) / (|a| + |b|)) = 100 * 2 LCS(a, b) / (|a| + |b|)``
  over characters, the normalised Levenshtein (insert/delete) similarity that TRACE computes for
  Py150 with ``fuzzywuzzy.fuzz.ratio`` (here unrounded).
* ``sari``: SARI (Xu et al., 2016) as in Hugging Face ``evaluate``/tensor2tensor: the mean over
  1..4-grams of keep F1, deletion precision and addition F1, averaged over sentences; needs the
  source, so its targets are ``(source, reference)`` or ``(source, [references...])`` pairs.

TRACE's official rules (the prefix-rule exact match, option letters, ScienceQA, the NumGLUE number
parser, the ``rouge`` package's ROUGE-L, Py150 placeholders + ``fuzz.ratio``) live in
`rankwise.trace_scoring` and are registered here under their names (``trace_accuracy``, ...).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from rankwise.errors import DataError
from rankwise.scoring_core import check_scorable, lcs_length  # noqa: F401  (lcs_length: public name)
from rankwise.trace_scoring import TRACE_SCORERS, scienceqa_accuracy  # noqa: F401  (public name)


def _same(prediction: Any, target: Any) -> bool:
    return prediction == target


def _same_text(prediction: Any, target: Any) -> bool:
    return str(prediction).strip().lower() == str(target).strip().lower()


#: metrics that are the percentage of items passing a rule: metric -> rule(prediction, target)
ITEM_RULES = {"accuracy": _same, "exact_match": _same_text}


def accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """Percentage of predictions equal to their target (label ids or strings)."""
    check_scorable(predictions, targets)
    return 100.0 * sum(map(_same, predictions, targets)) / len(targets)


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Percentage of generated strings equal to the answer after stripping and lower-casing."""
    check_scorable(predictions, targets)
    return 100.0 * sum(map(_same_text, predictions, targets)) / len(targets)


def item_scores(metric: str, predictions: Sequence[Any], targets: Sequence[Any]) -> list[float] | None:
    """Per-item scores (0 or 100) whose mean is the task's score, for the metrics of `ITEM_RULES`; None
    for the others (not a mean of pass / fail items). `rankwise.paired` resamples these."""
    rule = ITEM_RULES.get(metric)
    return None if rule is None else [100.0 if rule(p, t) else 0.0 for p, t in zip(predictions, targets)]


# --------------------------------------------------------------------------- ROUGE-L


class _UnicodeWordTokenizer:
    """Lower-cased runs of Unicode word characters (rouge-score's default drops non-ASCII letters)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


_ROUGE = None


def rouge_l(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure x 100: F = 2 P R / (P + R), P = LCS / |pred|, R = LCS / |ref| (in words)."""
    global _ROUGE
    check_scorable(predictions, targets)
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeWordTokenizer())
    total = sum(_ROUGE.score(str(t), str(p))["rougeL"].fmeasure for p, t in zip(predictions, targets))
    return 100.0 * total / len(targets)


# --------------------------------------------------------------------------- edit similarity


def edit_similarity(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Mean of ``100 * 2 LCS(p, t) / (|p| + |t|)`` over characters (two empty strings score 100)."""
    check_scorable(predictions, targets)
    total = 0.0
    for p, t in zip(predictions, targets):
        p, t = str(p), str(t)
        total += 1.0 if not p and not t else 2.0 * lcs_length(p, t) / (len(p) + len(t))
    return 100.0 * total / len(targets)


# --------------------------------------------------------------------------- SARI


def _tokenize_13a(text: str) -> str:
    """sacreBLEU's ``13a`` (mteval-v13a) tokenization, lower-cased, as HF's SARI normalises."""
    text = text.lower().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in text:  # these four entities only (not html.unescape: "&#39;" stays as it is)
        for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            text = text.replace(entity, char)
    text = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", f" {text} ")
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)
    return " ".join(text.split())


def _ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _sari_ngram(src: list[str], pred: list[str], refs: list[list[str]]) -> tuple[float, float, float]:
    """(keep F1, deletion precision, addition F1) for one n-gram order; 0/0 counts as 1."""
    nref = len(refs)
    ref_counts: Counter[str] = Counter(g for r in refs for g in r)
    src_counts = Counter({g: c * nref for g, c in Counter(src).items()})
    pred_counts = Counter({g: c * nref for g, c in Counter(pred).items()})

    kept = src_counts & pred_counts
    kept_good = kept & ref_counts
    kept_all = src_counts & ref_counts
    keep_p = sum(kept_good[g] / kept[g] for g in kept_good) / len(kept) if kept else 1.0
    keep_r = sum(kept_good.values()) / sum(kept_all.values()) if kept_all else 1.0
    keep_f = 2 * keep_p * keep_r / (keep_p + keep_r) if keep_p + keep_r > 0 else 0.0

    deleted = src_counts - pred_counts
    deleted_good = deleted - ref_counts
    del_p = sum(deleted_good[g] / deleted[g] for g in deleted_good) / len(deleted) if deleted else 1.0

    added = set(pred_counts) - set(src_counts)
    added_good = added & set(ref_counts)
    added_all = set(ref_counts) - set(src_counts)
    add_p = len(added_good) / len(added) if added else 1.0
    add_r = len(added_good) / len(added_all) if added_all else 1.0
    add_f = 2 * add_p * add_r / (add_p + add_r) if add_p + add_r > 0 else 0.0
    return keep_f, del_p, add_f


def sari_sentence(source: str, prediction: str, references: Sequence[str]) -> float:
    """SARI of one sentence in [0, 1]: (mean_n keep F1 + mean_n del P + mean_n add F1) / 3, n = 1..4."""
    if not references:
        raise DataError("SARI needs at least one reference per source")
    src = _tokenize_13a(source).split(" ")
    pred = _tokenize_13a(prediction).split(" ")
    refs = [_tokenize_13a(r).split(" ") for r in references]
    scores = [
        _sari_ngram(_ngrams(src, n), _ngrams(pred, n), [_ngrams(r, n) for r in refs]) for n in (1, 2, 3, 4)
    ]
    return sum(sum(s[k] for s in scores) / 4 for k in range(3)) / 3


def sari(predictions: Sequence[str], targets: Sequence[Any]) -> float:
    """Mean sentence SARI x 100; each target is ``(source, reference)`` or ``(source, [references])``."""
    check_scorable(predictions, targets)
    total = 0.0
    for p, t in zip(predictions, targets):
        if not (isinstance(t, (tuple, list)) and len(t) == 2 and isinstance(t[0], str)):
            raise DataError(
                f"sari targets must be (source, reference) pairs, got {type(t).__name__} {t!r:.80}; "
                "the causal-lm backbone produces them for tasks whose metric is 'sari'"
            )
        refs = [t[1]] if isinstance(t[1], str) else list(t[1])
        total += sari_sentence(t[0], str(p), refs)
    return 100.0 * total / len(targets)


SCORERS: dict[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "rouge_l": rouge_l,
    "edit_similarity": edit_similarity,
    "sari": sari,
}
SCORERS.update(TRACE_SCORERS)
