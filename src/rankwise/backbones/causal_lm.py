"""A transformers causal LM trained on TRACE-style prompt/answer pairs (continual instruction tuning).

Training objective: next-token cross-entropy on the *answer* tokens only,

    loss = - (1 / N) sum_{examples e} sum_{answer positions t of e} log p(y_t | y_<t),

with ``N`` the number of answer tokens in the batch (prompt and padding positions are labelled -100).
Sequences are left-padded for training and generation alike, so every answer ends at the last
column: the LM head is evaluated only on the last ``max answer length + 1`` columns
(``logits_to_keep``), which saves the ``batch x length x vocab`` logits a 49k-word vocabulary costs.
Position ids are ``cumsum(attention_mask) - 1``, so a left-padded sequence sees the same positions
as the unpadded one. Prediction is batched greedy decoding of at most ``task.max_new_tokens`` new
tokens; only the new tokens are decoded, special tokens skipped, whitespace stripped.

Truncation never cuts an answer silently: a too-long example loses prompt tokens from the *left*
(the instruction start; the text next to the answer is kept). Only when the answer alone does not
fit in ``max_length - 1`` tokens is it cut, with a warning; ``truncation_counts`` counts both, per
distinct example.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.backbones import trace_format
from rankwise.backbones.causal_lm_config import CHAT_TEMPLATE_MODES as CHAT_TEMPLATE_MODES
from rankwise.backbones.causal_lm_config import DEFAULT_GGUF as DEFAULT_GGUF
from rankwise.backbones.causal_lm_config import DTYPES as DTYPES
from rankwise.backbones.causal_lm_config import PROMPT_FORMATS as PROMPT_FORMATS
from rankwise.backbones.causal_lm_config import CausalLMConfig as CausalLMConfig
from rankwise.backbones.causal_lm_config import default_model_path as default_model_path
from rankwise.backbones.causal_lm_config import resolve_model_files as resolve_model_files
from rankwise.backbones.hub import ModelSource, hub_load_error
from rankwise.backbones.quantize import quantize_linears
from rankwise.errors import ConfigError, DataError
from rankwise.tasks import GenerationExample, Task


@dataclass
class LMBatch:
    """Left-padded token ids; ``labels`` (-100 outside answers) only for training batches."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    answers: list[Any]
    # 1 + the most answer tokens of a row, counted on the host by `collate` so that `loss` need not
    # read the labels back from the device; None: `loss` counts them
    answer_window: int | None = None

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


class CausalLMBackbone:
    """Backbone protocol for ``GenerationExample``s on a causal LM (see the module docstring)."""

    default_target_preset = "llama"
    peft_task_type = "CAUSAL_LM"  # peft.TaskType of an export (`rankwise export --to peft`)

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_length: int,
        use_chat_template: bool,
        device: torch.device,
        options: CausalLMConfig | None = None,
    ) -> None:
        self.options = options or CausalLMConfig(max_length=max_length)  # prompt format + decoding
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.use_chat_template = use_chat_template
        self.device = device
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = [eos] + (gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_token_ids = sorted({int(i) for i in ids if i is not None})
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_ids or [0])[0])
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache: dict[tuple[str, str, int | None, str | None], tuple[list[int], list[int]]] = {}
        self.truncation_counts = {"train_prompts": 0, "train_answers": 0, "eval_prompts": 0}

    # ------------------------------------------------------------------ text -> token ids
    def _texts(self, prompt: str, answer: str) -> tuple[str, str, bool]:
        """(prompt text, answer text, whether the prompt text already holds special tokens)."""
        if not self.use_chat_template:
            return prompt, answer, False
        user = [{"role": "user", "content": prompt}]
        prompt_text = self.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": answer}], tokenize=False
        )
        if full.startswith(prompt_text) and answer in full[len(prompt_text) :]:
            suffix = full[len(prompt_text) :]
            end = suffix.index(answer) + len(answer)
            return prompt_text, suffix[:end] + suffix[end:].rstrip(), True
        # template renders the assistant turn differently from the generation prompt: close with EOS
        return prompt_text, answer + (self.tokenizer.eos_token or ""), True

    def encode(
        self, example: GenerationExample, new_tokens: int | None = None, task_name: str | None = None
    ) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) after truncation; ``new_tokens`` set = an evaluation prompt.

        Training: ``len(prompt) + len(answer) <= max_length``; evaluation:
        ``len(prompt) <= max_length - new_tokens``. With ``prompt_format: trace`` the official TRACE
        rules of `rankwise.backbones.trace_format` apply instead (per task, hence ``task_name``).
        """
        key = (example.prompt, example.answer, new_tokens, task_name)
        if key in self._cache:
            return self._cache[key]
        if self.options.prompt_format == "trace":
            self._cache[key] = self._encode_trace(example, new_tokens is not None, task_name)
            return self._cache[key]
        prompt_text, answer_text, templated = self._texts(example.prompt, example.answer)
        tok = self.tokenizer
        prompt_ids = list(tok(prompt_text, add_special_tokens=not templated)["input_ids"])
        answer_ids = list(tok(answer_text, add_special_tokens=False)["input_ids"])
        if not templated and tok.eos_token_id is not None:
            answer_ids.append(int(tok.eos_token_id))
        if not prompt_ids:
            prompt_ids = [self.pad_token_id if tok.bos_token_id is None else int(tok.bos_token_id)]
        if new_tokens is not None:
            budget = self.max_length - new_tokens
            if budget < 1:
                raise ConfigError(
                    "backbone.max_length",
                    self.max_length,
                    f"more than the task's max_new_tokens ({new_tokens})",
                )
            if len(prompt_ids) > budget:
                prompt_ids = prompt_ids[-budget:]
                self._count("eval_prompts", example, "prompt cut from the left for generation")
        elif len(prompt_ids) + len(answer_ids) > self.max_length:
            if len(answer_ids) <= self.max_length - 1:
                prompt_ids = prompt_ids[-(self.max_length - len(answer_ids)) :]
                self._count("train_prompts", example, "prompt cut from the left")
            else:
                answer_ids = answer_ids[: self.max_length - 1]
                prompt_ids = prompt_ids[-1:]
                self._count("train_answers", example, "ANSWER cut (it alone exceeds max_length)")
        self._cache[key] = (prompt_ids, answer_ids)
        return prompt_ids, answer_ids

    def _encode_trace(
        self, example: GenerationExample, evaluation: bool, task_name: str | None
    ) -> tuple[list[int], list[int]]:
        o = self.options
        prompt_len = o.task_max_prompt_length.get(task_name, o.max_prompt_length or self.max_length)
        keep_start = task_name in o.keep_prompt_start
        if evaluation:
            return trace_format.encode_prompt(self.tokenizer, example.prompt, prompt_len, keep_start), []
        limit = prompt_len + (o.max_answer_length or 0)
        return trace_format.encode_train(
            self.tokenizer, example.prompt, example.answer, limit, o.max_answer_length or 0, keep_start
        )

    def _count(self, kind: str, example: GenerationExample, what: str) -> None:
        self.truncation_counts[kind] += 1
        if kind == "train_answers" or self.truncation_counts[kind] == 1:
            warnings.warn(
                f"causal-lm: {what} to fit backbone.max_length={self.max_length} "
                f"({self.truncation_counts[kind]} {kind.replace('_', ' ')} truncated so far; "
                f"prompt starts {example.prompt[:40]!r})",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ Backbone protocol
    def eval_length(self, example: GenerationExample, task: Task) -> int:
        """Prompt tokens of an evaluation input: the engine batches a test set by it, so a batch's
        left padding (and the prefill over it) is what its longest prompt needs, not the test set's."""
        return len(self.encode(example, task.max_new_tokens, task.name)[0])

    def collate(self, examples: Sequence[GenerationExample], task: Task, train: bool) -> LMBatch:
        if not examples:
            raise DataError(f"task {task.name!r}: empty batch")
        rows: list[list[int]] = []
        answer_lens: list[int] = []
        for ex in examples:
            if not isinstance(ex, GenerationExample):
                raise DataError(
                    f"task {task.name!r}: causal-lm needs GenerationExample, got {type(ex).__name__}"
                )
            prompt_ids, answer_ids = self.encode(ex, None if train else task.max_new_tokens, task.name)
            rows.append(prompt_ids + answer_ids if train else prompt_ids)
            answer_lens.append(len(answer_ids))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long) if train else None
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
            if labels is not None and answer_lens[i]:
                labels[i, width - answer_lens[i] :] = input_ids[i, width - answer_lens[i] :]
        answers: list[Any] = [
            (ex.prompt, ex.answer) if task.metric == "sari" else ex.answer for ex in examples
        ]  # SARI scores against the source too
        return LMBatch(
            input_ids.to(self.device),
            mask.to(self.device),
            None if labels is None else labels.to(self.device),
            answers,
            None if labels is None else int((labels != -100).sum(-1).max()) + 1,
        )

    def loss(self, batch: LMBatch, task: Task) -> torch.Tensor:
        if batch.labels is None:
            raise DataError("loss() needs a training batch (collate(..., train=True))")
        keep = batch.answer_window or int((batch.labels != -100).sum(-1).max()) + 1
        kwargs = {"logits_to_keep": keep} if self._keeps_logits else {}
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            **kwargs,
        )
        logits = out.logits[:, -keep:]
        targets = batch.labels[:, -keep + 1 :]
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100
        )

    @torch.no_grad()
    def predict(self, batch: LMBatch, task: Task) -> list[str]:
        from transformers import GenerationConfig

        o = self.options
        sampling = {"temperature": o.temperature, "top_p": o.top_p} if o.do_sample else {}
        gen = GenerationConfig(
            max_new_tokens=task.max_new_tokens,
            do_sample=o.do_sample,
            num_beams=1,
            repetition_penalty=o.repetition_penalty,
            no_repeat_ngram_size=o.no_repeat_ngram_size,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids or None,
            **sampling,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=gen
            )
        finally:
            self.model.train(was_training)
        new = out[:, batch.input_ids.shape[1] :]
        cleanup = {"clean_up_tokenization_spaces": False} if o.prompt_format == "trace" else {}
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True, **cleanup)
        return [text.strip() for text in texts] if o.strip_predictions else list(texts)

    def targets(self, batch: LMBatch) -> list[Any]:
        return list(batch.answers)


def load_model_and_tokenizer(config: CausalLMConfig) -> tuple[nn.Module, Any]:
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` from a local path or a Hub id (GGUF de-quantised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve_model_files(config)
    source = ModelSource(folder, is_hub=not Path(folder).expanduser().exists())
    extra = {"gguf_file": gguf} if gguf else {}
    try:  # local_files_only unless an online Hub id
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra, **source.from_pretrained_kwargs())
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=DTYPES[config.dtype], **extra, **source.auto_model_kwargs()
        )
    except (OSError, ValueError) as exc:
        if source.is_hub:
            raise hub_load_error("backbone.path", folder, exc) from exc
        raise ConfigError("backbone.path", config.path or folder, f"a loadable causal LM ({exc})") from exc
    return model, tokenizer


def build_backbone(config: CausalLMConfig, device: str | torch.device | None = None) -> CausalLMBackbone:
    """Load the model and tokenizer and wrap them (see `CausalLMConfig`)."""
    model, tokenizer = load_model_and_tokenizer(config)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if config.chat_template == "on" and not has_template:
        raise ConfigError(
            "backbone.chat_template", "on", "'off' or 'auto': this tokenizer has no chat template"
        )
    use_template = config.prompt_format == "split" and (
        config.chat_template == "on" or (config.chat_template == "auto" and has_template)
    )
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    quantize_linears(model, config.quantize, DTYPES[config.dtype])  # quantized by the move below
    dev = torch.device(config.device or device or "cpu")
    model.to(dev)
    return CausalLMBackbone(model, tokenizer, config.max_length, use_template, dev, options=config)
