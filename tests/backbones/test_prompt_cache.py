"""The prompt-feature cache shared by the CLIP and sentence-encoder backbones (issue 10, bug 1).

The reference for every cached result is the same computation with the cache switched off. The old
caches were keyed on parameter ids and versions only: after MoRAM's end_task (live factors removed,
the frozen bank in buffers) the key equalled the zero-shot key, so every X-TAIL row after the first
task reused zero-shot text features, and a resumed run (fresh cache) differed from an uninterrupted one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rankwise
from rankwise.backbones.clip import OpenClipConfig, build_open_clip
from rankwise.backbones.prompt_cache import PromptFeatureCache, module_state, tensor_digest
from rankwise.config import config_from_dict
from rankwise.engine import checkpoint as ckpt
from rankwise.engine.continual import run_experiment
from rankwise.engine.evaluate import evaluate_task
from rankwise.tasks import ClassificationExample, Task

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mtil_fixtures = _load("mtil_fixtures_for_cache", TESTS / "scenarios" / "test_mtil.py")
clip_fixtures = _load("clip_fixtures_for_cache", TESTS / "backbones" / "test_clip.py")
text_fixtures = _load("text_fixtures_for_cache", TESTS / "backbones" / "test_sentence_encoder.py")
tiny_bert_dir = text_fixtures.tiny_bert_dir


class Counter:
    """compute() for the cache: returns a fresh tensor and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([float(self.calls)])


# --- the key ---------------------------------------------------------------------------------------------
def test_every_kind_of_state_change_misses_and_nothing_else_does() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1))
    cache, compute = PromptFeatureCache(), Counter()

    def get(request="r"):
        return cache.get(model, request, compute).item()

    assert get() == 1 and get() == 1 and get("other") == 2 and get() == 1  # requests kept side by side
    with torch.no_grad():
        model[0].weight.add_(0.5)  # in place: an optimizer step
    assert get() == 3
    model[0].weight.data[0, 0] += 1.0  # through .data, which has its own version counter
    assert get() == 4
    model[0].bias.data = model[0].bias.data + 1.0  # .data replaced
    assert get() == 5
    model.eval()  # train/eval mode
    assert get() == 6
    model[1].p = 0.2  # any scalar attribute (MoRAM's tau / delta / budget are such attributes)
    assert get() == 7
    model[0].register_buffer("bank", torch.zeros(2, 3))  # a buffer appears
    assert get() == 8
    model[0].bank = torch.zeros(3, 2)  # same values, another shape (a bank that grew or changed)
    assert get() == 9
    model[0].bank = torch.zeros(3, 2, dtype=torch.float64)  # another dtype
    assert get() == 10
    model[0].note = [1, 2.5, "a"]  # a list of scalars
    assert get() == 11
    model[0].note.append(None)
    assert get() == 12
    model[0].helper = lambda x: x  # not state: other attributes never count
    assert get() == 12
    model[0].bank = torch.zeros(3, 2, dtype=torch.float64)  # equal state in a new tensor: equal features
    with torch.no_grad():
        model[0].weight.add_(0.0)  # a write that leaves every value as it was
    assert get() == 12 and compute.calls == 12


def test_the_key_is_the_content_so_a_reused_id_or_a_restored_state_is_exact() -> None:
    """CPython reuses the address (the id) of a freed tensor for the next one of its kind, with version
    0 again: a key of ids and versions took a replaced bank for the old one. The content key sees the
    new values, and state restored to what it was gives back the features of that state."""
    lin = nn.Linear(2, 2)
    lin.register_buffer("bank", torch.zeros(2))
    cache, compute = PromptFeatureCache(), Counter()
    cache.get(lin, "r", compute)
    for i in range(20):
        lin.bank = None  # the old tensor is freed here ...
        lin.bank = torch.full((2,), float(i + 1))  # ... and its id is free for this one
        cache.get(lin, "r", compute)
    assert compute.calls == 21, "a replaced tensor with new values was taken for the old one"
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    first = cache.get(lin, "r", compute)
    with torch.no_grad():
        lin.weight.mul_(3)
    assert cache.get(lin, "r", compute) is not first
    lin.load_state_dict(before)
    restored = cache.get(lin, "r", compute)  # computed afresh (the cache keeps the current state only) ...
    assert compute.calls == 23 and torch.equal(restored, torch.tensor([23.0]))
    assert cache.get(lin, "r", compute) is restored  # ... and kept


def test_digest_covers_every_dtype_layout_and_byte() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert tensor_digest(base) == tensor_digest(base.clone())
    assert tensor_digest(base.t()) == tensor_digest(base.t().contiguous())  # values in row-major order
    assert tensor_digest(base.t()) != tensor_digest(base)
    for dtype in (torch.bfloat16, torch.float16, torch.float64, torch.int8, torch.bool, torch.complex64):
        t = base.to(dtype)
        assert tensor_digest(t) == tensor_digest(t.clone())
        flipped = t.clone()
        flipped.view(-1)[0] = flipped.view(-1)[1]  # one element changed (0 -> 1, False -> True)
        assert tensor_digest(flipped) != tensor_digest(t), dtype
    bits = base.clone()
    bits.view(torch.int32)[1, 1] ^= 1  # the lowest mantissa bit of one value
    assert tensor_digest(bits) != tensor_digest(base)


def test_pinned_block_hashes_once_and_unpinned_lookups_every_time(monkeypatch) -> None:
    from rankwise.backbones import prompt_cache

    model, cache, compute = nn.Linear(2, 2), PromptFeatureCache(), Counter()
    calls = []
    original = prompt_cache.module_state
    monkeypatch.setattr(prompt_cache, "module_state", lambda *a: calls.append(1) or original(*a))
    for _ in range(3):
        cache.get(model, "r", compute)
    assert len(calls) == 3 and compute.calls == 1
    with cache.pinned():
        with cache.pinned():  # nested: the outermost block's signature
            for _ in range(5):
                cache.get(model, "r", compute)
        cache.get(model, "r", compute)
    assert len(calls) == 4 and compute.calls == 1
    with torch.no_grad():
        model.weight.add_(1.0)  # after the block: seen again
    cache.get(model, "r", compute)
    assert len(calls) == 5 and compute.calls == 2


class Stats(nn.Module):
    statistics_state = ("hits", "seen")

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("hits", torch.zeros(2))
        self.seen = 0


def test_statistics_state_is_ignored_and_inference_tensors_are_keyed_by_content() -> None:
    model, cache, compute = Stats(), PromptFeatureCache(), Counter()
    cache.get(model, "r", compute)
    model.hits += 1  # counted by a tracked forward: no effect on outputs
    model.seen += 5
    model.hits = torch.zeros(3)  # even replaced
    cache.get(model, "r", compute)
    assert compute.calls == 1
    with torch.inference_mode():
        frozen = nn.Linear(2, 2)  # inference tensors have no version counter; their bytes are readable
        cache.get(frozen, "r", compute)
        cache.get(frozen, "r", compute)
        assert compute.calls == 2
        frozen.weight.add_(1.0)
        cache.get(frozen, "r", compute)
    assert compute.calls == 3
    off = PromptFeatureCache(enabled=False)
    off.get(model, "r", compute), off.get(model, "r", compute)
    assert compute.calls == 5


def test_excluded_prefixes_are_left_out() -> None:
    model = nn.ModuleDict({"visual": nn.Linear(2, 2), "text": nn.Linear(2, 2)})
    cache, compute = PromptFeatureCache(exclude=("visual",)), Counter()
    cache.get(model, "r", compute)
    with torch.no_grad():
        model["visual"].weight.mul_(2)
    cache.get(model, "r", compute)
    assert compute.calls == 1
    with torch.no_grad():
        model["text"].weight.mul_(2)
    cache.get(model, "r", compute)
    assert compute.calls == 2
    names = [entry[0] for entry in module_state(model, ("visual",))]
    assert names == ["", "text"]


# --- MoRAM on a tiny CLIP, by hand ---------------------------------------------------------------------------
def _union_task() -> Task:
    names = ["cat", "dog", "car", "tree", "boat"]
    segments = [
        {"task": "a", "offset": 0, "count": 2, "templates": ["a photo of a {}."]},
        {"task": "b", "offset": 2, "count": 3, "templates": ["a drawing of a {}.", "art of a {}."]},
    ]
    return Task(
        "b", [], [], class_names=names[2:], templates=segments[1]["templates"], eval_class_names=names,
        label_offset=2, info={"eval_segments": segments},
    )  # fmt: skip


def _fresh(backbone, task: Task) -> torch.Tensor:
    cache = backbone.prompt_cache
    cache.enabled = False
    try:
        return backbone.eval_text_features(task)
    finally:
        cache.enabled = True


def _tiny_clip(seed: int = 0):
    torch.manual_seed(seed)
    return build_open_clip(OpenClipConfig(model_config=clip_fixtures.TINY_OPEN_CLIP), "cpu")


def _train_atoms(model, name: str, seed: int) -> None:
    """begin_task, then values as after training (B starts at 0: set every live factor at random)."""
    model.begin_task(name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.end_task()


def test_moram_lifecycle_options_and_loading_refresh_clip_features(tmp_path: Path) -> None:
    backbone, task = _tiny_clip(), _union_task()
    model = rankwise.get_model(backbone.model, rankwise.MoRAMConfig(r=4, preset="open_clip", delta=0.0))
    model.eval()
    zero_shot = backbone.eval_text_features(task).clone()
    _train_atoms(model, "a", seed=1)
    model.eval()
    after_a = backbone.eval_text_features(task)
    assert torch.equal(after_a, _fresh(backbone, task))  # the old cache returned zero_shot here
    assert not torch.allclose(after_a, zero_shot)
    _train_atoms(model, "b", seed=2)
    model.eval()
    after_b = backbone.eval_text_features(task).clone()
    assert torch.equal(after_b, _fresh(backbone, task)) and not torch.allclose(after_b, after_a)
    layers = [
        m for m in model.adapter_layers().values() if isinstance(m, rankwise.adapters.moram.MoRAMLinear)
    ]
    for option, value in (("tau", 0.5), ("budget", 2), ("delta_threshold", 0.3)):
        for layer in layers:
            setattr(layer, option, value)  # an inference sweep on a trained model
        changed = backbone.eval_text_features(task).clone()
        assert torch.equal(changed, _fresh(backbone, task)), option
        assert not torch.allclose(changed, after_b), option
        after_b = changed
    for layer in layers:
        layer.tau, layer.budget, layer.delta_threshold = 0.01, 4, 0.0
    trained = backbone.eval_text_features(task).clone()
    model.save_pretrained(tmp_path / "adapter")
    # loading into a model whose cache holds its zero-shot features
    other = _tiny_clip()
    other.model.eval()
    assert torch.equal(other.eval_text_features(task), zero_shot)
    loaded = rankwise.load_model(other.model, tmp_path / "adapter")
    loaded.eval()
    assert torch.equal(other.eval_text_features(task), trained)


def test_tracked_moram_evaluation_encodes_prompts_once(monkeypatch) -> None:
    """Atom hit counts change with every tracked forward; they are statistics, so batches share prompts."""
    backbone, task = _tiny_clip(), _union_task()
    model = rankwise.get_model(backbone.model, rankwise.MoRAMConfig(r=4, preset="open_clip"))
    _train_atoms(model, "a", seed=1)
    model.eval()
    calls = []
    original = backbone.class_features
    monkeypatch.setattr(backbone, "class_features", lambda *a: calls.append(a) or original(*a))
    images = clip_fixtures.rgb(3)
    examples = [ClassificationExample(x, y) for x, y in zip(images, [0, 1, 2])]
    batch = backbone.collate(examples, task, train=False)
    with model.track_activations():
        first = [backbone.predict(batch, task) for _ in range(3)]
    assert len(calls) == 2  # one per segment, once
    assert first[0] == first[1] == first[2]
    assert model.rank_report()[0]["tokens_seen"] > 0


# --- through the engine: X-TAIL with MoRAM on a tiny CLIP ---------------------------------------------------------
@pytest.fixture(scope="module")
def xtail_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xtail_cache")
    mtil_fixtures.make_aircraft(root, "fgvc-aircraft-2013b/data")
    mtil_fixtures.make_dtd_torchvision(root)
    mtil_fixtures.make_eurosat_torchvision(root, n=6)
    return root


def _xtail_config(root: Path) -> dict:
    return {
        "name": "xtail_cache",
        "seed": 0,
        "device": "cpu",
        "method": {"name": "moram", "r": 4, "delta": 0.0},
        "backbone": {
            "name": "open-clip",
            "model_config": clip_fixtures.TINY_OPEN_CLIP,
            "eval_templates": "first",
        },
        "scenario": {
            "name": "xtail",
            "root": str(root),
            "datasets": ["aircraft", "dtd", "eurosat"],
            "shots": 2,
            "split_convention": "torchvision",
        },
        "train": {"iterations": 4, "batch_size": 6, "lr": 0.05, "log_every": 1, "checkpoint_every": 10},
        "eval": {"batch_size": 4},
    }


def _no_cache(monkeypatch) -> None:
    monkeypatch.setattr(PromptFeatureCache, "get", lambda self, module, request, compute: compute())


@pytest.fixture(scope="module")
def xtail_reference(xtail_root, tmp_path_factory):
    """The uninterrupted run with the cache on."""
    return run_experiment(
        config_from_dict(_xtail_config(xtail_root)), tmp_path_factory.mktemp("ref") / "run", quiet=True
    )


def test_xtail_moram_rows_equal_the_uncached_evaluation(xtail_root, xtail_reference, tmp_path, monkeypatch):
    _no_cache(monkeypatch)
    uncached = run_experiment(config_from_dict(_xtail_config(xtail_root)), tmp_path / "run", quiet=True)
    assert xtail_reference.accuracy_matrix.shape == (4, 3)
    np.testing.assert_array_equal(xtail_reference.accuracy_matrix, uncached.accuracy_matrix)
    # the rows after each task are not all the zero-shot row: the text features did change
    assert not all(
        np.array_equal(row, xtail_reference.accuracy_matrix[0]) for row in xtail_reference.accuracy_matrix
    )


def test_xtail_moram_resumed_run_equals_uninterrupted(xtail_root, xtail_reference, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    calls = [0]
    original = ckpt.write_state

    def crash_at_third_commit(*args, **kwargs):  # commits: zero-shot row, task 1, task 2 (crash), ...
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt("stopped after task 2 was evaluated, before its commit")
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_state", crash_at_third_commit)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config_from_dict(_xtail_config(xtail_root)), run_dir, quiet=True)
    resumed = run_experiment(config_from_dict(_xtail_config(xtail_root)), run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(resumed.accuracy_matrix, xtail_reference.accuracy_matrix)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "task_end" and e.get("task") == 3 for e in events)


# --- the sentence encoder: MoRAM, a union label space, three tasks --------------------------------------------
SENTENCE_TASKS = [
    ("sport", ["sports", "good"], ["the team won the game", "a good goal", "great team", "good game"]),
    ("money", ["business", "bad"], ["stocks fell", "bad business news", "the stocks", "awful stocks"]),
    ("culture", ["science", "film", "movie"], ["a great film", "science news", "the movie review", "film"]),
]


def _sentence_tasks() -> list[Task]:
    union = [c for _, names, _ in SENTENCE_TASKS for c in names]
    tasks, offset = [], 0
    for name, names, texts in SENTENCE_TASKS:
        examples = [ClassificationExample(t, i % len(names)) for i, t in enumerate(texts)]
        tasks.append(
            Task(
                name,
                examples,
                examples,
                class_names=names,
                templates=["this text is about {} ."],
                eval_class_names=union,
                label_offset=offset,
            )  # fmt: skip
        )
        offset += len(names)
    return tasks


def _sentence_backbone(folder):
    from rankwise.backbones.text import SentenceEncoderConfig, build_backbone

    torch.manual_seed(0)
    return build_backbone(SentenceEncoderConfig(model_path=str(folder), logit_scale=10.0), "cpu")


def _train_sentence_task(backbone, model, task: Task, index: int) -> None:
    torch.manual_seed(100 + index)
    model.begin_task(task.name)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    model.train()
    for _ in range(3):
        loss = backbone.loss(backbone.collate(task.train, task, train=True), task)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.end_task()


def _row(backbone, tasks) -> list[tuple[float, torch.Tensor]]:
    row = []
    for task in tasks:
        batch = backbone.collate(task.test, task, train=False)
        row.append((evaluate_task(backbone, task, batch_size=2), backbone.scores(batch, task)))
    return row


def _sentence_rows(folder, start: int = 0, adapter_dir: Path | None = None, save_after: int | None = None):
    backbone = _sentence_backbone(folder)
    tasks = _sentence_tasks()
    config = rankwise.MoRAMConfig(r=4, preset="bert", delta=0.0)
    if adapter_dir is not None and start:
        model = rankwise.load_model(backbone.model, adapter_dir)
    else:
        model = rankwise.get_model(backbone.model, config)
    rows = [] if start else [_row(backbone, tasks)]
    for index in range(start, len(tasks)):
        _train_sentence_task(backbone, model, tasks[index], index)
        with model.track_activations():
            rows.append(_row(backbone, tasks))
        if save_after == index + 1:
            model.save_pretrained(adapter_dir)
    for tau, budget in ((0.5, 2), (0.05, 3)):  # an inference sweep on the trained model
        for layer in model.adapter_layers().values():
            layer.tau, layer.budget = tau, budget
        rows.append(_row(backbone, tasks))
    return rows


def _assert_rows_equal(rows, other) -> None:
    assert len(rows) == len(other)
    for row, ref in zip(rows, other):
        for (acc, scores), (ref_acc, ref_scores) in zip(row, ref):
            assert acc == ref_acc
            assert torch.equal(scores, ref_scores)


def test_sentence_encoder_moram_rows_equal_uncached_and_resumed(tiny_bert_dir, tmp_path, monkeypatch):
    cached = _sentence_rows(tiny_bert_dir, adapter_dir=tmp_path / "after1", save_after=1)
    # the union prompts did change after training and after the sweep (else the test proves nothing)
    assert not torch.equal(cached[0][0][1], cached[-3][0][1])
    assert not torch.equal(cached[-3][0][1], cached[-2][0][1])
    assert not torch.equal(cached[-2][0][1], cached[-1][0][1])
    resumed = _sentence_rows(tiny_bert_dir, start=1, adapter_dir=tmp_path / "after1")
    _assert_rows_equal(resumed, cached[2:])
    with monkeypatch.context() as patch:
        _no_cache(patch)
        uncached = _sentence_rows(tiny_bert_dir)
    _assert_rows_equal(cached, uncached)


def test_an_evaluation_row_hashes_the_encoder_once(tiny_bert_dir, monkeypatch):
    """evaluate_all pins the cache: one state hash per row of the accuracy matrix, whatever the number
    of tasks and batches; the scores equal the uncached ones, and a changed model is seen at the next row."""
    from rankwise.backbones import prompt_cache
    from rankwise.engine.evaluate import evaluate_all

    backbone, tasks = _sentence_backbone(tiny_bert_dir), _sentence_tasks()
    model = rankwise.get_model(backbone.model, rankwise.LoRAConfig(r=2, preset="bert"))
    calls = []
    original = prompt_cache.module_state
    monkeypatch.setattr(prompt_cache, "module_state", lambda *a: calls.append(1) or original(*a))
    first = evaluate_all(backbone, tasks, batch_size=2)
    assert len(calls) == 1 and sum(len(t.test) for t in tasks) > 2 * len(tasks)  # several batches
    _train_sentence_task(backbone, model, tasks[0], 0)
    second = evaluate_all(backbone, tasks, batch_size=2)
    assert len(calls) == 2
    with monkeypatch.context() as patch:
        _no_cache(patch)
        assert evaluate_all(backbone, tasks, batch_size=2) == second
    assert second != first  # training changed the scores, so the second row did not reuse the first's prompts
