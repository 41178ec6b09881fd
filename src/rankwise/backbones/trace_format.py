"""TRACE's official prompt format for the causal-LM backbone (``backbone.prompt_format: trace``).

What the official TRACE data collator (Artificer-AI-Lab/MoRAM ``TRACE/utils/data/data_collator.py``,
tokenizer set up by ``utils/utils.py::load_hf_tokenizer``) feeds the model, rebuilt on token ids:

* no chat template: the raw prompt string, BOS from the tokenizer (EOS when it has none), nothing
  else added (``add_special_tokens=False``);
* training, ordinary task: ``tok(prompt + answer)`` as *one* string (no separator: the answer's first
  token is tokenized in context), cut from the left to ``L = max_prompt_length + max_answer_length``
  tokens, then EOS appended if shorter than ``L``, then BOS prepended if still shorter than ``L``. The
  loss covers the last ``n`` tokens, ``n = len(tok(answer)) + 1`` counted on the answer tokenized
  *alone* (cut from the left to ``L``; the ``+ 1`` EOS only while shorter than ``L``) - exactly the
  official label mask, even where joint tokenization makes the two counts differ by a token;
* training, long-prompt task (``keep_prompt_start``, MeetingBank): answer tokenized alone, cut from the
  left to ``min(L, max(max_answer_length + 2, 32))`` tokens, EOS appended while shorter; the prompt is
  cut from the *right* (its start, the instruction, is kept) to what is left after BOS and the
  answer, ``L = task prompt length + max_answer_length``; loss on the answer + EOS;
* evaluation: ``tok(prompt)`` cut to the task's prompt length (``task_max_prompt_length``, else
  ``max_prompt_length``) - from the left, or from the right for ``keep_prompt_start`` tasks - and
  BOS prepended only while shorter than that length.
"""

from __future__ import annotations

from typing import Any

from rankwise.errors import ConfigError, choices


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bos_id(tokenizer: Any) -> int | None:
    """The official BOS: the tokenizer's, or its EOS when it has none (``load_hf_tokenizer``)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id
    return None if bos is None else int(bos)


def _cut(ids: list[int], limit: int, keep_start: bool) -> list[int]:
    if len(ids) <= limit:
        return ids
    return ids[:limit] if keep_start else ids[-limit:]


def _with_specials(ids: list[int], limit: int, bos: int | None, eos: int | None) -> list[int]:
    """The official ``tokenize()`` tail: EOS if shorter than the limit, then BOS if still shorter."""
    if eos is not None and len(ids) < limit:
        ids = ids + [eos]
    if bos is not None and len(ids) < limit:
        ids = [bos] + ids
    return ids


def encode_train(
    tokenizer: Any, prompt: str, answer: str, limit: int, max_answer: int, keep_start: bool
) -> tuple[list[int], list[int]]:
    """(context ids, loss ids) of one training example; their concatenation is the sequence fed."""
    bos, eos = bos_id(tokenizer), tokenizer.eos_token_id
    if keep_start:
        label_cut = min(limit, max(max_answer + 2, 32))
        label = _cut(_ids(tokenizer, answer), label_cut, keep_start=False)
        if eos is not None and len(label) < label_cut:
            label = label + [int(eos)]
        prefix = [] if bos is None else [bos]
        instr = _cut(_ids(tokenizer, prompt), max(1, limit - len(prefix) - len(label)), keep_start=True)
        over = len(prefix) + len(instr) + len(label) - limit
        if over > 0:  # only when the answer alone (nearly) fills the limit
            instr = instr[: max(0, len(instr) - over)]
        return prefix + instr, label
    n_label = len(_with_specials(_cut(_ids(tokenizer, answer), limit, False), limit, None, eos))
    full = _with_specials(_cut(_ids(tokenizer, prompt + answer), limit, False), limit, bos, eos)
    n_label = min(n_label, max(len(full) - 1, 0))  # keep one context token (the backbone needs a prompt)
    return full[: len(full) - n_label], full[len(full) - n_label :]


def encode_prompt(tokenizer: Any, prompt: str, limit: int, keep_start: bool) -> list[int]:
    """Evaluation prompt ids: cut to ``limit`` (see the module), BOS while shorter than ``limit``."""
    return _with_specials(_cut(_ids(tokenizer, prompt), limit, keep_start), limit, bos_id(tokenizer), None)


def check_options(c: Any, formats: tuple[str, ...]) -> None:
    """Validate the prompt-format and decoding fields of a ``CausalLMConfig`` (ConfigError on bad ones)."""

    def count(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if c.prompt_format not in formats:
        raise ConfigError("backbone.prompt_format", c.prompt_format, choices(formats))
    trace = c.prompt_format == "trace"
    if trace and c.chat_template == "on":
        raise ConfigError(
            "backbone.chat_template", "on", "'off' or 'auto' with prompt_format 'trace' (no template)"
        )
    for name, low in (("max_prompt_length", 1), ("max_answer_length", 0)):
        value = getattr(c, name)
        if value is not None and not count(value, low):
            raise ConfigError(f"backbone.{name}", value, f"an integer >= {low} or null")
    if not isinstance(c.task_max_prompt_length, dict):
        raise ConfigError(
            "backbone.task_max_prompt_length", c.task_max_prompt_length, "a mapping {task: int}"
        )
    for task, value in c.task_max_prompt_length.items():
        if not count(value, 1):
            raise ConfigError(f"backbone.task_max_prompt_length.{task}", value, "an integer >= 1")
    if not isinstance(c.keep_prompt_start, list) or not all(isinstance(t, str) for t in c.keep_prompt_start):
        raise ConfigError("backbone.keep_prompt_start", c.keep_prompt_start, "a list of task names")
    if not trace and (
        c.max_prompt_length is not None
        or c.max_answer_length is not None
        or c.task_max_prompt_length
        or c.keep_prompt_start
    ):
        raise ConfigError(
            "backbone.prompt_format",
            c.prompt_format,
            "'trace' when max_prompt_length, max_answer_length, task_max_prompt_length or keep_prompt_start is set",
        )
    for name in ("do_sample", "strip_predictions"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(f"backbone.{name}", getattr(c, name), "true or false")
    if not (isinstance(c.temperature, (int, float)) and c.temperature > 0):
        raise ConfigError("backbone.temperature", c.temperature, "a number > 0")
    if not (isinstance(c.top_p, (int, float)) and 0 < c.top_p <= 1):
        raise ConfigError("backbone.top_p", c.top_p, "a number in (0, 1]")
    if not (isinstance(c.repetition_penalty, (int, float)) and c.repetition_penalty > 0):
        raise ConfigError("backbone.repetition_penalty", c.repetition_penalty, "a number > 0 (1 = off)")
    if not count(c.no_repeat_ngram_size, 0):
        raise ConfigError(
            "backbone.no_repeat_ngram_size", c.no_repeat_ngram_size, "an integer >= 0 (0 = off)"
        )
