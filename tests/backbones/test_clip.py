"""CLIP backbones: tiny random open_clip and transformers CLIPs saved to / loaded from tmp folders,
the loss against a hand computation, X-TAIL union evaluation by hand, caching and config errors."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from backbones.clip_helpers import save_open_clip
from torch import nn

from rankwise.backbones.clip import (
    ClipBackbone,
    ClipBatch,
    HFClipConfig,
    OpenClipConfig,
    build_hf_clip,
    build_open_clip,
    clip_loss,
)
from rankwise.errors import ConfigError, DataError
from rankwise.tasks import ClassificationExample, Task

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_clip_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt for transformers' CLIPTokenizer, built from open_clip's BPE file the way
    CLIP's SimpleTokenizer builds its vocabulary (bytes, bytes + '</w>', merges, two special tokens)."""
    import open_clip.tokenizer as oct

    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(oct.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hf_clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 16,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    write_clip_tokenizer(folder / "tok")
    CLIPTokenizer(str(folder / "tok" / "vocab.json"), str(folder / "tok" / "merges.txt")).save_pretrained(
        folder
    )
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def rgb(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 36, 3), dtype=np.uint8) for _ in range(n)]


def task_of(images, labels, names=("cat", "dog", "car")) -> Task:
    ex = [ClassificationExample(x, y) for x, y in zip(images, labels)]
    return Task("t", ex, ex, class_names=list(names), templates=["a photo of a {}.", "a drawing of a {}."])


# --- the loss ---------------------------------------------------------------------------------------
def test_clip_loss_per_class_present_matches_hand_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 4) * 3
    labels = torch.tensor([2, 0, 2, 3, 2])
    L = logits.tolist()
    i2t = sum(-L[i][y] + math.log(sum(math.exp(v) for v in L[i])) for i, y in enumerate(labels.tolist())) / 5
    t2i = 0.0
    present = sorted(set(labels.tolist()))
    for c in present:
        col = [L[i][c] for i in range(5)]
        lse = math.log(sum(math.exp(v) for v in col))
        mine = [i for i in range(5) if labels[i] == c]
        t2i += sum(-(col[i] - lse) for i in mine) / len(mine)
    t2i /= len(present)
    form = "per_class_present"
    assert clip_loss(logits, labels, 1.0, form).item() == pytest.approx(i2t + t2i, rel=1e-5)
    assert clip_loss(logits, labels, 0.5, form).item() == pytest.approx(i2t + 0.5 * t2i, rel=1e-5)
    assert clip_loss(logits, labels, 0.0, form).item() == pytest.approx(i2t, rel=1e-5)
    # the earlier form does not depend on the seen classes
    assert clip_loss(logits, labels, 1.0, form, num_seen=50).item() == pytest.approx(i2t + t2i, rel=1e-5)
    # one image per class: exactly CLIP's symmetric terms over the batch
    sq, diag = torch.randn(3, 3), torch.arange(3)
    ref = F.cross_entropy(sq, diag) + F.cross_entropy(sq.t(), diag)
    assert clip_loss(sq, diag, t2i_loss=form).item() == pytest.approx(ref.item(), rel=1e-5)



@pytest.mark.parametrize("form", ["official", "per_class_present"])
def test_clip_loss_with_the_batch_classes_given_reads_nothing_back(form: str) -> None:
    """With the batch's distinct labels from collate (found on the host) neither form reads the
    labels back from the device; the value is the one ``torch.unique`` gives."""
    from host_reads import HostReads

    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4) * 3, torch.tensor([2, 0, 2, 3, 2, 0])
    with HostReads() as mode:
        mode.active = True
        given = clip_loss(logits, labels, 1.0, form, num_seen=3, present=torch.tensor([0, 2, 3]))
    assert mode.reads == []
    assert torch.equal(given, clip_loss(logits, labels, 1.0, form, num_seen=3))

def official_loss_by_loops(logits: list[list[float]], labels: list[int], seen: int, weight: float) -> float:
    """The official MoRAM / CoDyRA loss written out with Python floats: rows of S seen prompts (masked
    to -inf for image->text, no image of theirs in the batch) + C current prompts; text->image is a
    cross-entropy of each prompt's scores over the batch against the unnormalised multi-hot
    mask[c, i] = 1[label_i = c], averaged over all S + C prompts."""
    n, c = len(labels), len(logits[0])
    i2t = 0.0
    for i, y in enumerate(labels):
        row = [float("-inf")] * seen + logits[i]  # seen columns masked
        lse = math.log(sum(math.exp(v) for v in row if v != float("-inf")))
        i2t += -(row[seen + y] - lse)
    i2t /= n
    t2i = 0.0
    for k in range(seen + c):
        if k < seen:
            continue  # a seen prompt: its mask row is all zero, so its cross-entropy is exactly 0
        col = [logits[i][k - seen] for i in range(n)]
        lse = math.log(sum(math.exp(v) for v in col))
        t2i += sum(-(col[i] - lse) for i in range(n) if labels[i] == k - seen)
    return i2t + weight * t2i / (seen + c)


@pytest.mark.parametrize("seen", [0, 7])
@pytest.mark.parametrize("weight", [1.0, 0.25, 0.0])
def test_clip_loss_official_matches_hand_loops(seen: int, weight: float) -> None:
    torch.manual_seed(3)
    logits = torch.randn(6, 4, dtype=torch.float64) * 4
    labels = torch.tensor([2, 0, 2, 2, 3, 0])  # class 1 absent, class 2 has three images
    expected = official_loss_by_loops(logits.tolist(), labels.tolist(), seen, weight)
    got = clip_loss(logits, labels, weight, "official", num_seen=seen).item()
    assert got == pytest.approx(expected, rel=1e-12)
    if weight and seen:  # the seen prompts change the mean, not the sum
        assert got != pytest.approx(clip_loss(logits, labels, weight, "official").item(), rel=1e-6)
    # the default form is the official one
    assert clip_loss(logits, labels, weight, num_seen=seen).item() == pytest.approx(expected, rel=1e-12)


def test_clip_loss_official_equals_the_full_seen_plus_current_computation() -> None:
    """The official steps with real seen prompts (normalised features, -inf masking over all S + C
    prompts, probability-target cross-entropy) give our loss over the C current classes, values
    and gradients: the seen prompts only count in the mean."""
    torch.manual_seed(4)
    S, C, N, D, scale = 5, 3, 7, 8, 100.0
    image = F.normalize(torch.randn(N, D, dtype=torch.float64), dim=-1).requires_grad_()
    seen_text = F.normalize(torch.randn(S, D, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(C, D, dtype=torch.float64), dim=-1).requires_grad_()
    labels = torch.tensor([0, 2, 2, 1, 0, 2, 2])
    full = torch.cat([seen_text, text])
    logits_full = scale * image @ full.t()
    logits_full = torch.cat([torch.full_like(logits_full[:, :S], float("-inf")), logits_full[:, S:]], 1)
    shifted = labels + S
    mask = (shifted[:, None] == torch.arange(S + C)[None, :]).double().t()  # (S + C, N)
    ref = F.cross_entropy(logits_full, shifted) + F.cross_entropy(scale * full @ image.t(), mask)
    ref_grads = torch.autograd.grad(ref, (image, text))
    ours = clip_loss(scale * image @ text.t(), labels, 1.0, "official", num_seen=S)
    grads = torch.autograd.grad(ours, (image, text))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_clip_loss_magnitude_on_the_last_xtail_task() -> None:
    """Issue 10's numbers: random features, 1,100 X-TAIL classes (S = 703 seen, C = 397 SUN397 classes),
    batch 64, scale 100: the official term is about 0.6, the per-class-present one about 11 (17x)."""
    gen = torch.Generator().manual_seed(0)
    S, C, N, D = 703, 397, 64, 512
    image = F.normalize(torch.randn(N, D, generator=gen), dim=-1)
    text = F.normalize(torch.randn(C, D, generator=gen), dim=-1)
    labels = torch.randint(0, C, (N,), generator=gen)
    logits = 100.0 * image @ text.t()
    i2t = F.cross_entropy(logits, labels).item()
    official = clip_loss(logits, labels, 1.0, "official", S).item() - i2t
    ours = clip_loss(logits, labels, 1.0, "per_class_present", S).item() - i2t
    assert 0.5 < official < 0.8 and 9.0 < ours < 13.0
    assert 14 < ours / official < 20


def test_clip_loss_rejects_unknown_form() -> None:
    with pytest.raises(ConfigError, match="backbone.t2i_loss"):
        clip_loss(torch.zeros(2, 2), torch.tensor([0, 1]), 1.0, "mean_over_present")


def test_open_clip_loss_uses_first_template_and_logit_scale() -> None:
    backbone = build_open_clip(OpenClipConfig(model_config=TINY_OPEN_CLIP), "cpu")
    task = task_of(rgb(4), [0, 1, 1, 2])
    batch = backbone.collate(task.train, task, train=True)
    assert batch.present_labels.tolist() == [0, 1, 2]  # the batch's classes, found on the host
    m = backbone.model
    with torch.no_grad():
        img = F.normalize(m.encode_image(batch.pixels), dim=-1)
        import open_clip

        tok = open_clip.SimpleTokenizer(context_length=16)(
            ["a photo of a cat.", "a photo of a dog.", "a photo of a car."]
        )
        txt = F.normalize(m.encode_text(tok), dim=-1)
        logits = m.logit_scale.exp() * img @ txt.t()
        expected = clip_loss(logits, torch.tensor([0, 1, 1, 2]))
        assert backbone.loss(batch, task).item() == pytest.approx(expected.item(), rel=1e-5)
    assert m.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-4)
    # X-TAIL: targets live in the union label space (task labels + offset)
    task.eval_class_names, task.label_offset = ["x", "y", "cat", "dog", "car"], 2
    assert backbone.targets(backbone.collate(task.test, task, train=False)) == [2, 3, 3, 4]


def test_backbone_loss_counts_the_seen_classes_and_takes_the_form_from_config() -> None:
    """Task t's text->image mean runs over S + C prompts, S = classes of tasks 1..t-1: the scenario's
    ``info["seen_class_count"]`` (MTIL), else the union offset (X-TAIL); the form comes from config."""
    torch.manual_seed(0)
    backbone = build_open_clip(OpenClipConfig(model_config=TINY_OPEN_CLIP), "cpu")
    task = task_of(rgb(4), [0, 1, 1, 2])
    batch = backbone.collate(task.train, task, train=True)
    with torch.no_grad():
        image = backbone.encode_images(batch.pixels)
        text = backbone.encode_texts([f"a photo of a {c}." for c in task.class_names])
        logits = backbone.logit_scale().exp() * image @ text.t()
        assert backbone.loss(batch, task).item() == pytest.approx(
            clip_loss(logits, batch.labels, num_seen=0).item(), rel=1e-5
        )
        task.eval_class_names, task.label_offset = ["x"] * 10 + list(task.class_names), 10
        assert backbone.loss(batch, task).item() == pytest.approx(
            clip_loss(logits, batch.labels, num_seen=10).item(), rel=1e-5
        )
        task.info["seen_class_count"] = 37  # recorded by the scenario: wins over the offset
        assert backbone.loss(batch, task).item() == pytest.approx(
            clip_loss(logits, batch.labels, num_seen=37).item(), rel=1e-5
        )
        backbone.t2i_loss = "per_class_present"
        assert backbone.loss(batch, task).item() == pytest.approx(
            clip_loss(logits, batch.labels, t2i_loss="per_class_present").item(), rel=1e-5
        )
    built = build_open_clip(OpenClipConfig(model_config=TINY_OPEN_CLIP, t2i_loss="per_class_present"), "cpu")
    assert built.t2i_loss == "per_class_present"
    assert OpenClipConfig().t2i_loss == "official"


# --- evaluation: union label space, templates, cache -------------------------------------------------
class LookupClip(ClipBackbone):
    """Images are given as feature vectors; each prompt has a fixed feature. Counts text encodings."""

    def __init__(self, prompt_features: dict[str, list[float]], eval_templates: str = "average") -> None:
        self.anchor = nn.Linear(1, 1)
        super().__init__(self.anchor, lambda x: x, lambda x: x, "cpu", eval_templates)
        self.table = prompt_features
        self.encoded = 0

    def _encode_pixels(self, pixels):
        return pixels

    def _encode_prompts(self, prompts):
        self.encoded += len(prompts)
        return torch.tensor([self.table[p] for p in prompts])

    def logit_scale(self):
        return torch.tensor(0.0)


def test_xtail_union_prediction_by_hand() -> None:
    # task A: classes a0, a1 (template "A {}"), task B: b0, b1, b2 (template "B {}"); union = 5 classes
    table = {"A a0": [1, 0, 0], "A a1": [0, 1, 0], "B b0": [0, 0, 1], "B b1": [1, 1, 0], "B b2": [-1, 0, 0]}
    backbone = LookupClip(table, eval_templates="first")
    union = ["a0", "a1", "b0", "b1", "b2"]
    segments = [
        {"task": "A", "offset": 0, "count": 2, "templates": ["A {}"]},
        {"task": "B", "offset": 2, "count": 3, "templates": ["B {}"]},
    ]
    task_b = Task(
        "B",
        [],
        [],
        class_names=["b0", "b1", "b2"],
        templates=["B {}"],
        eval_class_names=union,
        label_offset=2,
        info={"eval_segments": segments},
    )
    # cosine with normalised text: [1,0,0] . x etc.; chosen so the argmax is known by hand
    images = [
        torch.tensor([0.9, 0.8, 0.0]),
        torch.tensor([0.0, 0.1, 2.0]),
        torch.tensor([-3.0, 0.5, 0.0]),
        torch.tensor([2.0, 0.1, 0.0]),
    ]
    labels = [1, 0, 2, 0]  # task-local labels of B: b1, b0, b2, b0
    batch = ClipBatch(torch.stack(images), torch.tensor(labels), [y + 2 for y in labels])
    # image 0: scores a0 .9, a1 .8, b0 0, b1 1.7/sqrt2=1.20, b2 -.9 -> b1 (3)
    # image 1: b0 (2); image 2: b2 (4); image 3: a0 2.0 vs b1 2.1/sqrt2=1.48 -> a0 (0)
    assert backbone.predict(batch, task_b) == [3, 2, 4, 0]
    assert backbone.targets(batch) == [3, 2, 4, 2]


def test_template_average_and_cache() -> None:
    table = {"p c": [3, 0], "q c": [0, 1], "p d": [1, 1], "q d": [1, -1]}
    task = Task("t", [], [], class_names=["c", "d"], templates=["p {}", "q {}"])
    avg = LookupClip(table, "average")
    feats = avg.eval_text_features(task)
    ref_c = F.normalize(
        F.normalize(torch.tensor([3.0, 0]), dim=0) + F.normalize(torch.tensor([0.0, 1]), dim=0), dim=0
    )
    assert torch.allclose(feats[0], ref_c) and torch.allclose(feats[1], torch.tensor([1.0, 0.0]), atol=1e-6)
    first = LookupClip(table, "first").eval_text_features(task)
    assert torch.allclose(first, torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]]))
    assert avg.encoded == 4
    avg.eval_text_features(task)
    assert avg.encoded == 4  # cached
    with torch.no_grad():
        avg.anchor.weight.add_(1.0)  # any in-place parameter change invalidates the cache
    avg.eval_text_features(task)
    assert avg.encoded == 8


def test_collate_rejects_labels_outside_task_and_missing_names() -> None:
    backbone = LookupClip({})
    task = Task("t", [], [], class_names=["a"], templates=["{}"])
    with pytest.raises(DataError, match="label 3 outside its 1 classes"):
        backbone.collate([ClassificationExample(np.zeros((4, 4, 3), np.uint8), 3)], task, train=False)
    with pytest.raises(DataError, match="no class names or templates"):
        backbone.eval_text_features(Task("u", [], []))
    with pytest.raises(DataError, match="does not exist"):
        backbone.collate([ClassificationExample("/no/such.png", 0)], task, train=False)


# --- tiny models saved and loaded ---------------------------------------------------------------------
def test_open_clip_save_and_load_local_dir(tmp_path: Path) -> None:
    torch.manual_seed(1)
    built = build_open_clip(OpenClipConfig(model_config=TINY_OPEN_CLIP), "cpu")
    save_open_clip(built.model, tmp_path / "oc", TINY_OPEN_CLIP)
    loaded = build_open_clip(OpenClipConfig(architecture=f"local-dir:{tmp_path / 'oc'}"), "cpu")
    weights = tmp_path / "oc" / "open_clip_model.safetensors"
    from_cfg = build_open_clip(
        OpenClipConfig(model_config=str(tmp_path / "oc" / "open_clip_config.json"), pretrained=str(weights)),
        "cpu",
    )
    task = task_of(rgb(3, seed=2), [0, 1, 2])
    for other in (loaded, from_cfg):
        b1, b2 = built.collate(task.test, task, False), other.collate(task.test, task, False)
        assert torch.equal(b1.pixels, b2.pixels)
        built.model.eval(), other.model.eval()
        assert torch.allclose(built.eval_text_features(task), other.eval_text_features(task), atol=1e-6)
        assert torch.allclose(built.encode_images(b1.pixels), other.encode_images(b2.pixels), atol=1e-6)
    assert built.default_target_preset == "open_clip"


def test_hf_clip_from_folder(hf_folder: Path) -> None:
    import open_clip

    backbone = build_hf_clip(HFClipConfig(path=str(hf_folder)), "cpu")
    assert backbone.default_target_preset == "hf_clip"
    # the tokenizer written from open_clip's BPE file tokenises exactly like open_clip
    ids = backbone.tokenizer(["a photo of a golden retriever."])["input_ids"][0]
    ref = open_clip.SimpleTokenizer(context_length=16)(["a photo of a golden retriever."])[0]
    assert ids == ref[: len(ids)].tolist()
    task = task_of(rgb(4, seed=3), [0, 1, 2, 0])
    batch = backbone.collate(task.train, task, train=True)
    assert batch.pixels.shape == (4, 3, 32, 32)
    m = backbone.model
    with torch.no_grad():
        tok = backbone.tokenizer(
            [f"a photo of a {c}." for c in task.class_names], padding=True, return_tensors="pt"
        )
        txt = F.normalize(m.text_projection(m.text_model(**tok).pooler_output), dim=-1)
        img = F.normalize(
            m.visual_projection(m.vision_model(pixel_values=batch.pixels).pooler_output), dim=-1
        )
        expected = clip_loss(m.logit_scale.exp() * img @ txt.t(), batch.labels)
        assert backbone.loss(batch, task).item() == pytest.approx(expected.item(), rel=1e-5)
    preds = backbone.predict(batch, task)
    assert len(preds) == 4 and all(0 <= p < 3 for p in preds)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backbone.eval_templates"):
        OpenClipConfig(eval_templates="mean")
    with pytest.raises(ConfigError, match="backbone.model_config"):
        OpenClipConfig(model_config={"embed_dim": 8})
    with pytest.raises(ConfigError, match="backbone.model_config"):
        OpenClipConfig(model_config=str(tmp_path / "none.json"))
    with pytest.raises(ConfigError, match="backbone.t2i_weight"):
        OpenClipConfig(t2i_weight=-1)
    with pytest.raises(ConfigError, match="backbone.t2i_loss.*'official'"):
        OpenClipConfig(t2i_loss="mean")
    with pytest.raises(ConfigError, match="backbone.pretrained"):
        build_open_clip(OpenClipConfig(pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match="backbone.architecture"):
        build_open_clip(OpenClipConfig(architecture="ViT-Q-99"))
    with pytest.raises(ConfigError, match="backbone.path"):
        HFClipConfig(path=str(tmp_path))


@pytest.mark.slow
def test_vit_b16_shapes_with_codyra_forward_backward() -> None:
    """ViT-B/16 (random init): 144 adapted linears, 4.4M trainable parameters at r = 16 (docs/methods.md),
    one forward/backward of the CLIP loss reaches every factor. About 45 s on 2 shared CPU cores."""
    import rankwise

    backbone = build_open_clip(OpenClipConfig(architecture="ViT-B-16"), "cpu")
    model = rankwise.get_model(backbone.model, rankwise.CoDyRAConfig(r=16, preset="open_clip"))
    model.begin_task("t")
    params = model.trainable_parameters()
    assert sum(p.numel() for p in params) == 4_425_984
    assert len(model.rank_report()) == 144
    task = Task("t", [], [], class_names=["cat", "dog"], templates=["a photo of a {}."])
    batch = ClipBatch(torch.randn(2, 3, 224, 224), torch.tensor([0, 1]), [0, 1])
    backbone.loss(batch, task).backward()
    assert all(p.grad is not None for p in params)


def test_seen_classes_at_task_t_are_the_earlier_tasks_classes(tmp_path: Path) -> None:
    """Official: after each task its template[0] prompts join `seen_classes` (a list, in task order), so
    at task t the loss sees S = sum of the class counts of tasks 1..t-1, for MTIL and X-TAIL alike."""
    import importlib.util

    from rankwise.backbones.clip import seen_class_count
    from rankwise.scenarios.mtil import MTILConfig, XTAILConfig, build_mtil, build_xtail

    spec = importlib.util.spec_from_file_location(
        "mtil_fixtures_for_clip", Path(__file__).resolve().parents[1] / "scenarios" / "test_mtil.py"
    )
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    fixtures.make_aircraft(tmp_path, "fgvc-aircraft-2013b/data")
    fixtures.make_dtd_torchvision(tmp_path)
    fixtures.make_eurosat_torchvision(tmp_path)
    common = dict(root=str(tmp_path), datasets=["aircraft", "dtd", "eurosat"], split_convention="torchvision")
    mtil = build_mtil(MTILConfig(**common, shots=2), seed=0)
    xtail = build_xtail(XTAILConfig(**common, shots=2), seed=0)
    sizes = [len(t.class_names) for t in mtil]
    expected = [0, sizes[0], sizes[0] + sizes[1]]
    assert [seen_class_count(t) for t in mtil] == expected
    assert [seen_class_count(t) for t in xtail] == expected == [t.label_offset for t in xtail]
