"""CLIP backbones: open_clip models and transformers `CLIPModel`, behind one `Backbone` interface.

Each model subclasses `ClipBackbone` (`rankwise.backbones.clip_base`, which also holds the training
loss, zero-shot logits, the evaluation path and their formulas) with its own tokenizer, transforms and
encoders. The shared names stay importable from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from rankwise.backbones.clip_base import (
    EVAL_TEMPLATE_MODES as EVAL_TEMPLATE_MODES,
)
from rankwise.backbones.clip_base import (
    T2I_LOSS_FORMS as T2I_LOSS_FORMS,
)
from rankwise.backbones.clip_base import (
    ClipBackbone,
    check_shared_options,
    device_field,
    eval_templates_field,
    t2i_loss_field,
    t2i_weight_field,
)
from rankwise.backbones.clip_base import ClipBatch as ClipBatch
from rankwise.backbones.clip_base import clip_loss as clip_loss
from rankwise.backbones.clip_base import seen_class_count as seen_class_count
from rankwise.backbones.clip_base import to_pil as to_pil
from rankwise.backbones.hub import (
    HF_HUB_PREFIX,
    cached_open_clip_folder,
    cached_open_clip_weights,
    hub_load_error,
    hub_offline,
    looks_like_hub_id,
    open_clip_hub_source,
    resolve_model_source,
)
from rankwise.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------


@dataclass
class OpenClipConfig:
    """An open_clip CLIP: built-in architecture, ``local-dir:`` folder, or an explicit model config."""

    architecture: str = field(
        default="ViT-B-16",
        metadata={
            "help": "open_clip model name (e.g. ViT-B-16), 'hf-hub:org/name' (Hub; cached after the "
            "first download) or 'local-dir:/path' holding open_clip_config.json and weights"
        },
    )
    pretrained: str | None = field(
        default=None,
        metadata={
            "help": "local checkpoint file (.safetensors/.pt/.bin) or an open_clip tag such as "
            "'openai' (downloads); null = random init"
        },
    )
    model_config: Any = field(
        default=None,
        metadata={
            "help": "model config dict (embed_dim, vision_cfg, text_cfg) or a JSON file path; "
            "overrides architecture, e.g. for tiny test models"
        },
    )
    device: str | None = device_field()
    eval_templates: str = eval_templates_field()
    t2i_weight: float = t2i_weight_field()
    t2i_loss: str = t2i_loss_field()
    train_augment: bool = field(
        default=False,
        metadata={
            "help": "train on open_clip's training transform (RandomResizedCrop scale (0.9, 1), "
            "bicubic), as the official CoDyRA/MoRAM code does (the paper presets set true); "
            "false = the evaluation transform (resize + center crop), a deviation"
        },
    )

    def __post_init__(self) -> None:
        check_shared_options(self)
        if isinstance(self.model_config, str) and not Path(self.model_config).is_file():
            raise ConfigError("backbone.model_config", self.model_config, "a dict or an existing JSON file")
        if isinstance(self.model_config, dict):
            missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in self.model_config]
            if missing:
                raise ConfigError("backbone.model_config", self.model_config, f"a dict with keys {missing}")


class OpenClipBackbone(ClipBackbone):
    """open_clip CLIP: ``encode_image`` / ``encode_text`` with the model's own tokenizer and transforms."""

    default_target_preset = "open_clip"
    image_modules = ("visual",)

    def __init__(
        self, model: nn.Module, tokenizer: Any, preprocess_train: Any, preprocess_eval: Any, **kw: Any
    ):
        super().__init__(model, preprocess_train, preprocess_eval, **kw)
        self.tokenizer = tokenizer

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale


def _open_clip_from_config(
    cfg: dict[str, Any], pretrained: str | None, preprocess: dict[str, Any] | None = None
) -> tuple[nn.Module, Any, Any, Any]:
    from dataclasses import asdict

    import open_clip
    from open_clip.factory import load_checkpoint
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = dict(cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(**cfg)
    if pretrained:
        load_checkpoint(model, pretrained)
    pp_dict = {**asdict(PreprocessCfg()), **(preprocess or {}), "size": model.visual.image_size}
    set_model_preprocess_cfg(model, pp_dict)
    pp = PreprocessCfg(**pp_dict)
    train_tf = image_transform_v2(pp, is_train=True)
    eval_tf = image_transform_v2(pp, is_train=False)
    text_cfg = cfg["text_cfg"]
    if "hf_tokenizer_name" in text_cfg:
        tokenizer = open_clip.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77)
        )
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    return model, tokenizer, train_tf, eval_tf


def build_open_clip(config: OpenClipConfig, device: str | torch.device | None = None) -> OpenClipBackbone:
    """Build an open_clip backbone; weights stay float32 (the engine handles autocast)."""
    import open_clip

    device = config.device or device or "cpu"
    architecture, pretrained = config.architecture, config.pretrained
    if pretrained and not Path(pretrained).is_file():
        tags = (
            open_clip.list_pretrained_tags_by_model(architecture)
            if config.model_config is None and not architecture.startswith(HF_HUB_PREFIX)
            else []
        )
        if pretrained not in tags:
            raise ConfigError(
                "backbone.pretrained",
                pretrained,
                f"an existing checkpoint file{' or one of ' + ', '.join(tags) if tags else ''}",
            )
        if hub_offline():  # a tag downloads: offline, its file must already be in the HF cache
            pretrained = cached_open_clip_weights(architecture, pretrained)
    if architecture.startswith(HF_HUB_PREFIX) and config.model_config is None:
        repo = architecture[len(HF_HUB_PREFIX):]
        if not looks_like_hub_id(repo):
            raise ConfigError("backbone.architecture", architecture, "'hf-hub:org/name' with a Hub repo id")
        if hub_offline():  # read the cached snapshot as a local folder: open_clip would try the network
            architecture = f"local-dir:{cached_open_clip_folder(repo)}"
    if config.model_config is not None:
        cfg = config.model_config
        preprocess = None
        if isinstance(cfg, str):  # a bare model config or open_clip_config.json ({model_cfg, preprocess_cfg})
            raw = json.loads(Path(cfg).read_text())
            cfg, preprocess = raw.get("model_cfg", raw), raw.get("preprocess_cfg")
        model, tokenizer, train_tf, eval_tf = _open_clip_from_config(cfg, pretrained, preprocess)
    else:
        if not architecture.startswith(("local-dir:", HF_HUB_PREFIX)) and architecture not in open_clip.list_models():
            raise ConfigError(
                "backbone.architecture",
                architecture,
                "an open_clip model name (see open_clip.list_models()), 'hf-hub:org/name' or 'local-dir:/path'",
            )
        try:
            model, train_tf, eval_tf = open_clip.create_model_and_transforms(
                architecture,
                pretrained=None if architecture.startswith(("local-dir:", HF_HUB_PREFIX)) else pretrained,
            )
            tokenizer = open_clip.get_tokenizer(architecture)
        except Exception as exc:  # noqa: BLE001 - a failed download (any hub error) becomes one line
            hub = open_clip_hub_source(architecture, pretrained)
            if hub is None:
                raise
            raise hub_load_error(*hub, exc, local="a local checkpoint file or 'local-dir:DIR'") from exc
    model = model.to(device).float()
    return OpenClipBackbone(
        model,
        tokenizer,
        train_tf if config.train_augment else eval_tf,
        eval_tf,
        device=device,
        eval_templates=config.eval_templates,
        t2i_weight=config.t2i_weight,
        t2i_loss=config.t2i_loss,
    )


# ---------------------------------------------------------------------------------------------
# transformers CLIPModel
# ---------------------------------------------------------------------------------------------


@dataclass
class HFClipConfig:
    """A transformers `CLIPModel` + processor (image processor and tokenizer) from a local folder."""

    path: str = field(
        default="",
        metadata={
            "help": "folder with config.json, weights, tokenizer and "
            "preprocessor_config.json (save_pretrained layout), or a Hugging Face Hub id"
        },
    )
    device: str | None = device_field()
    eval_templates: str = eval_templates_field()
    t2i_weight: float = t2i_weight_field()
    t2i_loss: str = t2i_loss_field()

    def __post_init__(self) -> None:
        check_shared_options(self)
        expected = "a folder containing a CLIPModel config.json"
        if not self.path or not isinstance(self.path, str):
            raise ConfigError("backbone.path", self.path, f"{expected}, or a Hugging Face Hub id")
        source = resolve_model_source(self.path, "backbone.path", expected)
        if not source.is_hub and not (Path(source.location) / "config.json").is_file():
            raise ConfigError("backbone.path", self.path, expected)


class HFClipBackbone(ClipBackbone):
    """transformers CLIP: ``get_image_features`` / ``get_text_features`` with its CLIPProcessor."""

    default_target_preset = "hf_clip"
    image_modules = ("vision_model", "visual_projection")

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, **kw: Any):
        def transform(image: Image.Image) -> torch.Tensor:
            return image_processor(images=image, return_tensors="pt")["pixel_values"][0]

        super().__init__(model, transform, transform, **kw)
        self.tokenizer = tokenizer
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.model.get_image_features(pixel_values=pixels))

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return self._features(self.model.get_text_features(**tok))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale


def build_hf_clip(config: HFClipConfig, device: str | torch.device | None = None) -> HFClipBackbone:
    """Load `CLIPModel`, `CLIPImageProcessor` and the tokenizer from ``config.path``: a local folder
    (no downloads), or a Hub id (see `rankwise.backbones.hub`)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    device = config.device or device or "cpu"
    source = resolve_model_source(config.path, "backbone.path", "a folder containing a CLIPModel config.json")
    kwargs = source.from_pretrained_kwargs()
    try:
        model = CLIPModel.from_pretrained(source.location, **kwargs).to(device).float()
        tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
        image_processor = CLIPImageProcessor.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as exc:
        if not source.is_hub:
            raise
        raise hub_load_error("backbone.path", source.location, exc) from exc
    return HFClipBackbone(
        model,
        tokenizer,
        image_processor,
        device=device,
        eval_templates=config.eval_templates,
        t2i_weight=config.t2i_weight,
        t2i_loss=config.t2i_loss,
    )
