"""TRACE's official scoring rules, as scorers (registered in `rankwise.scoring.SCORERS`).

Each rule reproduces what the official TRACE evaluation computes (Artificer-AI-Lab/MoRAM ``TRACE/``:
``metrics.py``, ``evaluations/eval_*.py``, ``evaluations/qwen_math_parser.py``,
``inference/infer_multi_command.py``, ``inference/collect_results.py``), on a 0..100 scale:

* ``trace_accuracy`` (``caculate_accuracy``, the "prefix rule"): a prediction is right when, stripped,
  it *starts with* the answer: ``pred.strip()[:len(answer)] == answer``. Case-sensitive, the answer is
  not stripped, an empty answer or prediction is wrong. Used by C-STANCE / FOMC (after the choice
  normalisation below), ScienceQA (on letters) and the O-LoRA classification tasks.
* ``trace_choice_accuracy`` (C-STANCE, FOMC): first the official choice normalisation, then the prefix
  rule. Normalisation: the first standalone option letter (regex ``\\b([ABC])\\b``, any case) upper-cased;
  else the first character whose upper case is an option letter ("hawkish" -> "A"); else the text.
* ``scienceqa_accuracy`` (``eval_ScienceQA``): answers are ``"B\\n<reasoning>"``; the letter is the first
  character of the stripped text (``"N/A"`` when empty), scored with the prefix rule.
* ``numglue_accuracy`` (``qwen_math_parser.calculate_math_accuracy``): see `numglue_answer`,
  `normalize_math` and `math_equal`.
* ``trace_rouge_l`` (``caculate_rouge``, the ``rouge`` 1.0.1 package, ROUGE-L summary level): see
  `rouge_l_summary`. A pair with an empty prediction or answer scores 0 (it still counts).
* ``py150_similarity`` (``eval_Py150``): `py150_postprocess` on both sides, then
  ``fuzzywuzzy.fuzz.ratio`` with the python-Levenshtein backend: ``round(100 * 2 LCS / (|a| + |b|))``
  per example, an integer (Python's round-half-even); empty side -> 0. ``py150_similarity_difflib`` is
  the same with fuzzywuzzy's fallback backend (``difflib.SequenceMatcher.ratio``), used when
  python-Levenshtein is not installed (the official requirements.txt lists neither package).

SARI (20Minuten) is ``rankwise.scoring.sari`` (Hugging Face's ``sari`` metric, which TRACE loads).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from math import isclose
from typing import Any

from rankwise.scoring_core import check_scorable, lcs_length


# --------------------------------------------------------------------------- prefix rule
def prefix_match(prediction: Any, answer: Any) -> bool:
    """TRACE's exact match: ``p = str(prediction).strip()``; right iff ``answer != ""`` and
    ``p[:min(len(answer), len(p))] == answer`` (i.e. ``p`` starts with ``answer``)."""
    pred, gold = str(prediction).strip(), str(answer)
    cut = pred[: min(len(gold), len(pred))]
    return cut != "" and gold != "" and cut == gold


def trace_accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """Percentage of predictions that start (after stripping) with their answer (`prefix_match`)."""
    check_scorable(predictions, targets)
    return 100.0 * sum(prefix_match(p, t) for p, t in zip(predictions, targets)) / len(targets)


CHOICE_LABELS = "ABC"  # C-STANCE and FOMC: options A, B, C


def normalize_choice(prediction: Any, labels: str = CHOICE_LABELS) -> str:
    """The official option-letter normalisation of C-STANCE / FOMC predictions (module docstring)."""
    text = str(prediction).strip()
    match = re.search(rf"\b([{labels}])\b", text, re.IGNORECASE)
    if match:
        return match.group(1).upper()
    allowed = set(labels)
    return next((ch.upper() for ch in text if ch.upper() in allowed), text)


def trace_choice_accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """`trace_accuracy` of `normalize_choice`-d predictions (answers are the letters A/B/C)."""
    check_scorable(predictions, targets)
    return trace_accuracy([normalize_choice(p) for p in predictions], targets)


def scienceqa_letter(text: Any) -> str:
    """First character of the stripped text (``"B\\nBecause ..."`` -> ``"B"``); ``"N/A"`` when empty."""
    s = str(text).strip()
    return s[0] if s else "N/A"


def scienceqa_accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """ScienceQA: `trace_accuracy` on the answer letters (`scienceqa_letter`) of both sides."""
    check_scorable(predictions, targets)
    return trace_accuracy([scienceqa_letter(p) for p in predictions], [scienceqa_letter(t) for t in targets])


# --------------------------------------------------------------------------- NumGLUE parser
_LAST_NUMBER = re.compile(r"-?\d+\.?\d*")


def boxed_content(text: str) -> str:
    """What follows the last ``boxed``: the brace-balanced ``{...}`` body, else the text up to ``$``."""
    if "boxed" not in text:
        return ""
    rest = text.split("boxed")[-1]
    if not rest:
        return ""
    if rest[0] != "{":
        return rest.split("$")[0].strip()
    depth, out = 1, []
    for ch in rest[1:]:
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            break
        out.append(ch)
    return "".join(out)


def numglue_answer(prediction: Any) -> str:
    """The answer extracted from a generation: `normalize_math` of a non-empty ``\\boxed{}`` body, else
    the last match of ``-?\\d+\\.?\\d*`` ("1,234" -> "234", "12." -> "12."), else the stripped text."""
    text = str(prediction).strip()
    boxed = boxed_content(text)
    if boxed:
        return normalize_math(boxed)
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else text.strip()


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}`` (unchanged when malformed)."""
    head, *parts = s.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if part.startswith("{"):
            out += part
        elif len(part) < 2:
            return s
        elif part[1] != "{":
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "{" + part[0] + "}" + part[1:]
    return out


def _fix_a_slash_b(s: str) -> str:
    """``"3/4"`` -> ``"\\frac{3}{4}"`` when both sides are plain integers written canonically."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a = parts[0] if "sqrt" in parts[0] else int(parts[0])
        b = parts[1] if "sqrt" in parts[1] else int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


_REMOVE_KEYS = ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to")


def normalize_math(text: Any) -> str:
    """Qwen2.5-Math's ``strip_string`` as TRACE runs it (applied to answers and ``\\boxed{}`` bodies).

    In order: strip; drop newlines; strip trailing ``.``; LaTeX clean-up (``\\!``, array/bmatrix ->
    pmatrix, t/dfrac -> frac, ``\\left``/``\\right``, ``\\{``, a trailing ``\\text{unit}``, degrees,
    ``$``, ``\\(``/``\\)``, ``\\text{x}`` -> x); drop ``x=`` ... ``z\\to``; ``\\emptyset``; drop ``%``;
    ``" ."`` -> ``" 0."``; ``infinity``/``inf`` -> ``\\infty``; drop *every* ``and`` substring ("thousand"
    -> "thous") and ``\\mathbf``, ``\\mbox{..}``, quotes; ``j`` -> ``i`` when there is no ``i``;
    ``12.000`` -> ``12``; leading ``.`` -> ``0.``; ``k = 5`` -> ``5`` (left side <= 2 chars);
    ``\\sqrt2`` -> ``\\sqrt{2}``; drop spaces; ``\\frac12`` -> ``\\frac{1}{2}``; ``3/4`` -> ``\\frac{3}{4}``.
    Word numbers stay words (the word2number step is a no-op: the package is not in TRACE's
    requirements), and the official bracket-stripping branch is unreachable (it needs a string that
    starts with a bracket to be alphanumeric) so it is absent here.
    """
    s = str(text).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    without_unit = re.sub(r"\\text{.*?}$", "", s).strip()
    if without_unit not in ("", s):
        s = without_unit
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for key in _REMOVE_KEYS:
        s = s.replace(key, "")
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox{.*?}", "", s).replace("'", "").replace('"', "")
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s).replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(s))


def parse_number(text: Any) -> float | None:
    """``float`` of the text without commas; on failure, a trailing ``%`` or ``\\`` is dropped and the
    value divided by 100 (the official parser does so for *any* text that fails: ``"12\\"`` -> 0.12)."""
    s = str(text).replace(",", "")
    try:
        return float(s)
    except ValueError:
        pass
    s = s[:-1] if s.endswith("%") else s
    s = s[:-1] if s.endswith("\\") else s
    try:
        return float(s) / 100
    except ValueError:
        return None


def math_equal(prediction: str, reference: str) -> bool:
    """The official answer comparison, without its sympy fallback.

    1. equal after ``strip().lower()``;
    2. both numbers (`parse_number`): equal iff ``isclose(p, r')`` with ``rel_tol=1e-4`` for some
       ``r' in (r / 100, r, 100 r)``, and no other test is tried;
    3. empty prediction: wrong;
    4. equal, case-insensitively, after dropping ``{}()`` (and outer ``[]()`` when the prediction is
       bracketed and the reference does not open with the other bracket kind);
    5. ``"x = 5"`` (left side <= 2 chars, the other side without ``=``): compare the right side.

    Not reproduced: the last step, sympy's symbolic equality, reached only when an answer is a
    non-numeric expression (e.g. ``\\boxed{2*3}`` against ``6``).
    """
    if prediction.strip().lower() == reference.strip().lower():
        return True
    p_num, r_num = parse_number(prediction), parse_number(reference)
    if p_num is not None and r_num is not None:
        return any(isclose(r, p_num, rel_tol=1e-4) for r in (r_num / 100, r_num, r_num * 100))
    if not prediction:
        return False
    pred, ref = prediction.strip(), reference.strip()
    p_cmp, r_cmp = pred, ref
    if (pred.startswith("[") and pred.endswith("]") and not ref.startswith("(")) or (
        pred.startswith("(") and pred.endswith(")") and not ref.startswith("[")
    ):
        p_cmp, r_cmp = p_cmp.strip("[]()"), r_cmp.strip("[]()")
    for ch in "{}()":
        p_cmp, r_cmp = p_cmp.replace(ch, ""), r_cmp.replace(ch, "")
    if p_cmp.lower() == r_cmp.lower():
        return True
    if pred.count("=") == 1 and len(pred.split("=")[0].strip()) <= 2 and "=" not in ref:
        return math_equal(pred.split("=")[1], ref)
    if ref.count("=") == 1 and len(ref.split("=")[0].strip()) <= 2 and "=" not in pred:
        return math_equal(pred, ref.split("=")[1])
    return False


def numglue_accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """Percentage with ``math_equal(numglue_answer(pred), normalize_math(answer.strip()))``."""
    check_scorable(predictions, targets)
    hits = sum(
        math_equal(numglue_answer(p), normalize_math(str(t).strip())) for p, t in zip(predictions, targets)
    )
    return 100.0 * hits / len(targets)


# --------------------------------------------------------------------------- ROUGE-L (rouge 1.0.1)
def _rouge_sentences(text: str) -> list[str]:
    return [" ".join(chunk.split()) for chunk in text.split(".") if chunk]


def _lcs_words(ref: list[str], hyp: list[str]) -> set[str]:
    """Words of one longest common subsequence, back-tracked as ``rouge`` does (up on a strict win)."""
    rows = [[0] * (len(hyp) + 1)]
    for word in ref:
        prev, row = rows[-1], [0]
        for j, other in enumerate(hyp, 1):
            row.append(prev[j - 1] + 1 if word == other else max(prev[j], row[j - 1]))
        rows.append(row)
    i, j, out = len(ref), len(hyp), set()
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            out.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif rows[i - 1][j] > rows[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out


def rouge_l_summary(hypothesis: str, reference: str) -> float | None:
    """ROUGE-L F of the ``rouge`` package (summary level, ``exclusive=True``), in [0, 1].

    Both texts are split on ``"."`` into sentences (empty chunks dropped, whitespace collapsed; words
    are split on ``" "``, case kept, other punctuation stays on its word). With ``U`` the union over
    every (reference sentence, hypothesis sentence) pair of the *set* of words of their back-tracked
    LCS, ``m`` / ``n`` the numbers of *distinct* reference / hypothesis words:
    ``R = |U| / m``, ``P = |U| / n``, ``F = 2 P R / (P + R + 1e-8)``. None when a side has no sentence
    (the package raises there).
    """
    hyp, ref = _rouge_sentences(hypothesis), _rouge_sentences(reference)
    if not hyp or not ref:
        return None
    m = len({w for s in ref for w in s.split(" ")})
    n = len({w for s in hyp for w in s.split(" ")})
    union: set[str] = set()
    for r in ref:
        for h in hyp:
            union |= _lcs_words(r.split(" "), h.split(" "))
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def trace_rouge_l(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """Mean of `rouge_l_summary` x 100, as TRACE calls it: a newline is appended to a prediction that
    has none; an empty prediction or answer (or a side with no sentence) adds 0 but still counts."""
    check_scorable(predictions, targets)
    total = 0.0
    for p, t in zip(predictions, targets):
        p, t = str(p), str(t)
        if p == "" or t == "":
            continue
        total += rouge_l_summary(p if "\n" in p else p + "\n", t) or 0.0
    return 100.0 * total / len(targets)


# --------------------------------------------------------------------------- Py150
_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def py150_postprocess(code: str) -> str:
    """``<NUM_LIT>`` -> ``0``, ``<STR_LIT>`` / ``<CHAR_LIT>`` -> ``""``, ``<NUM_LIT:200>`` -> ``200`` (the
    shortest body up to ``>``; each distinct placeholder found in the text is then replaced everywhere).
    ``<EOL>`` and ``<s>`` stay as they are."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    for kind, body in _LITERAL.findall(code):
        code = code.replace(f"<{kind}_LIT:{body}>", body)
    return code


def fuzz_ratio(a: str, b: str, backend: str = "levenshtein") -> int:
    """``fuzzywuzzy.fuzz.ratio``: 100 if equal, 0 if a side is empty, else ``round(100 * ratio)`` with
    ratio ``1 - indel(a, b) / (|a| + |b|) = 2 LCS / (|a| + |b|)`` (python-Levenshtein) or
    ``difflib.SequenceMatcher(None, a, b).ratio()`` (fuzzywuzzy without python-Levenshtein)."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    if backend == "levenshtein":
        total = len(a) + len(b)
        # 1 - indel / total, in this float order (python-Levenshtein >= 0.20, rapidfuzz): at a .5 tie
        # it can differ from 2 LCS / total by one ulp, which decides the rounding (0.425 -> 43, not 42)
        ratio = 1.0 - (total - 2 * lcs_length(a, b)) / total
    elif backend == "difflib":
        ratio = difflib.SequenceMatcher(None, a, b).ratio()
    else:
        raise ValueError(f"fuzz_ratio backend must be 'levenshtein' or 'difflib', got {backend!r}")
    return int(round(100 * ratio))


def _py150(predictions: Sequence[Any], targets: Sequence[Any], backend: str) -> float:
    check_scorable(predictions, targets)
    total = 0
    for p, t in zip(predictions, targets):
        p, t = py150_postprocess(str(p)), py150_postprocess(str(t))
        if p and t:
            total += fuzz_ratio(p, t, backend)
    return total / len(targets)


def py150_similarity(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """Mean integer ``fuzz.ratio`` (python-Levenshtein backend) of post-processed code (see module)."""
    return _py150(predictions, targets, "levenshtein")


def py150_similarity_difflib(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """`py150_similarity` with fuzzywuzzy's pure-Python ``difflib`` backend."""
    return _py150(predictions, targets, "difflib")


TRACE_SCORERS: dict[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "trace_accuracy": trace_accuracy,
    "trace_choice_accuracy": trace_choice_accuracy,
    "scienceqa_accuracy": scienceqa_accuracy,
    "numglue_accuracy": numglue_accuracy,
    "trace_rouge_l": trace_rouge_l,
    "py150_similarity": py150_similarity,
    "py150_similarity_difflib": py150_similarity_difflib,
}
