"""Hub ids wherever a model path is: a local folder wins, an online id reaches ``from_pretrained``
without ``local_files_only``, and offline a cached id loads while an uncached one is one error line.

Nothing here touches the network: every test sets HF_HUB_OFFLINE=1 or replaces ``from_pretrained``.
The "Hub cache" is a tmp folder in huggingface_hub's layout (models--org--name/refs/main +
snapshots/<commit>/...), filled by saving a tiny model into it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rankwise.backbones import hub
from rankwise.errors import ConfigError

WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] this text is about sports news a good bad movie".split()
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture()
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE=1 and an empty HF_HOME; returns its hub cache folder (read at call time)."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def put_in_cache(cache: Path, repo: str, folder: Path) -> None:
    """Copy `folder` into the hub cache as the `main` snapshot of `repo` (huggingface_hub's layout)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, root / "snapshots" / COMMIT)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


def embed(model_path: str) -> torch.Tensor:
    from rankwise.backbones.text import SentenceEncoderConfig, build_backbone

    backbone = build_backbone(SentenceEncoderConfig(model_path=model_path), "cpu")
    backbone.model.eval()
    with torch.no_grad():
        return backbone.embed(["this movie is good", "sports news"])


# -- what counts as a Hub id --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["bert-base-uncased", "org/name", "sentence-transformers/all-MiniLM-L6-v2", "a_b.c"])
def test_hub_ids_are_recognised(value: str) -> None:
    assert hub.looks_like_hub_id(value)


@pytest.mark.parametrize("value", ["/abs/missing", "./rel", "~/x", "a/b/c", "org/", "-x", "a--b", "a..b", "x" * 97])
def test_paths_and_malformed_names_are_not_hub_ids(value: str) -> None:
    assert not hub.looks_like_hub_id(value)


def test_missing_path_that_is_no_hub_id_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backbone.model_path=.*no such path"):
        hub.resolve_model_source(str(tmp_path / "missing"), "backbone.model_path", "a local folder")


def test_kwargs_online_hub_id_has_no_local_files_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert hub.ModelSource("org/name", is_hub=True).from_pretrained_kwargs() == {}
    assert hub.ModelSource("/a/folder", is_hub=False).from_pretrained_kwargs() == {"local_files_only": True}
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub.ModelSource("org/name", is_hub=True).from_pretrained_kwargs() == {"local_files_only": True}


def test_online_hub_id_reaches_from_pretrained_and_a_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online: the id goes to from_pretrained as is (no local_files_only); a failed download is one line."""
    import transformers

    from rankwise.backbones.text import SentenceEncoderConfig, build_backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def fake(name, **kwargs):
        calls.append((name, kwargs))
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(ConfigError) as info:
        build_backbone(SentenceEncoderConfig(model_path="org/tiny-bert"), "cpu")
    assert calls == [("org/tiny-bert", {})]
    message = str(info.value)
    assert "\n" not in message
    assert "backbone.model_path='org/tiny-bert'" in message and "could not be downloaded" in message
    assert "couldn't connect" in message and "local folder" in message


# -- offline: not cached -> one line; cached -> loads; a local folder wins --------------------------------
def test_offline_uncached_id_is_one_line_per_backbone(offline_cache: Path) -> None:
    from rankwise.backbones.causal_lm import CausalLMConfig, load_model_and_tokenizer
    from rankwise.backbones.clip import HFClipConfig, OpenClipConfig, build_hf_clip, build_open_clip
    from rankwise.backbones.text import SentenceEncoderConfig, build_backbone

    attempts = [
        ("backbone.model_path", "org/tiny-bert", lambda: build_backbone(SentenceEncoderConfig(model_path="org/tiny-bert"))),
        ("backbone.path", "org/tiny-lm", lambda: load_model_and_tokenizer(CausalLMConfig(path="org/tiny-lm"))),
        ("backbone.path", "org/tiny-clip", lambda: build_hf_clip(HFClipConfig(path="org/tiny-clip"))),
        ("backbone.architecture", "hf-hub:org/tiny-oc",
         lambda: build_open_clip(OpenClipConfig(architecture="hf-hub:org/tiny-oc"))),
        ("backbone.pretrained", "openai", lambda: build_open_clip(OpenClipConfig(architecture="ViT-B-32", pretrained="openai"))),
    ]  # fmt: skip
    for field, name, attempt in attempts:
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message, message
        assert message.startswith(f"{field}={name!r} is invalid"), message
        assert "HF_HUB_OFFLINE is set" in message and str(offline_cache) in message, message
        assert f"point {field} at" in message and "--local-dir DIR" in message, message


def test_offline_cached_hub_id_loads_like_the_folder(offline_cache: Path, tiny_bert: Path) -> None:
    put_in_cache(offline_cache, "org/tiny-bert", tiny_bert)
    assert torch.equal(embed("org/tiny-bert"), embed(str(tiny_bert)))


def test_local_folder_wins_over_a_hub_id_of_the_same_name(
    offline_cache: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./org/tiny-bert exists: it is loaded, though the (empty) cache has no such id."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bert, tmp_path / "org" / "tiny-bert")
    assert torch.equal(embed("org/tiny-bert"), embed(str(tiny_bert)))


def test_offline_cached_open_clip_hf_hub_name_loads(offline_cache: Path, tmp_path: Path) -> None:
    from backbones.clip_helpers import save_open_clip

    from rankwise.backbones.clip import OpenClipConfig, build_open_clip

    torch.manual_seed(3)
    built = build_open_clip(OpenClipConfig(model_config=TINY_OPEN_CLIP), "cpu")
    save_open_clip(built.model, tmp_path / "oc", TINY_OPEN_CLIP)
    put_in_cache(offline_cache, "org/tiny-oc", tmp_path / "oc")
    loaded = build_open_clip(OpenClipConfig(architecture="hf-hub:org/tiny-oc"), "cpu")
    for key, value in built.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_causal_lm_and_hf_clip_configs_accept_hub_ids_and_refuse_missing_paths(tmp_path: Path) -> None:
    from rankwise.backbones.causal_lm import CausalLMConfig, resolve_model_files
    from rankwise.backbones.clip import HFClipConfig

    assert resolve_model_files(CausalLMConfig(path="org/lm", gguf_file="m.gguf")) == ("org/lm", "m.gguf")
    assert HFClipConfig(path="openai/clip-vit-base-patch32").path == "openai/clip-vit-base-patch32"
    with pytest.raises(ConfigError, match="backbone.path=.*no such path"):
        HFClipConfig(path=str(tmp_path / "none"))
