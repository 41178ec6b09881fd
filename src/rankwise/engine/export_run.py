"""``rankwise export RUN_DIR --to peft|merged|rankwise [--task N]``: a run's model in a format others load.

The model after task N is rebuilt from the run itself: the backbone from the run's ``config.yaml``
and the adapter from ``checkpoints/task_<N>_<name>/`` (checksums verified), N defaulting to the last
finished task. Then

* ``rankwise``: the adapter folder as `RankwiseModel.save_pretrained` writes it (``rankwise.load_model``);
* ``peft``: a peft LoRA folder whose delta B A equals W - W0 (LoRA / CoDyRA; see `export_peft`), with
  ``base_model_name_or_path`` (the backbone's model, or ``--base-model``) and ``task_type`` (the
  backbone's ``peft_task_type``) filled, so ``peft.AutoPeftModel.from_pretrained(folder)`` works;
* ``merged``: the base model with every adapter folded in (``merge_and_unload``; LoRA / CoDyRA, or a
  ``full`` run's weights): a plain transformers folder (``save_pretrained``, with the tokenizer) for
  transformers backbones, else ``model.safetensors`` holding the state dict.

The output folder is written under a temporary name and renamed when complete (with a
``checksums.json``), so it holds a whole export or nothing. ``--push-to-hub REPO`` then uploads it
with huggingface_hub; offline it is refused, on one line, before anything is built.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rankwise import io
from rankwise.engine import checkpoint as ckpt
from rankwise.engine.rundir import load_run_config
from rankwise.engine.strategy import strategy_for
from rankwise.errors import CheckpointError, ConfigError, RankwiseError, choices
from rankwise.registry import BACKBONES

FORMATS = ("peft", "merged", "rankwise")
_TASK_DIR = re.compile(r"task_(\d+)_.+")


def task_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{N: checkpoints/task_<N>_<name>} of the finished tasks (temporary siblings ignored)."""
    folder = run_dir / "checkpoints"
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _TASK_DIR.fullmatch(path.name)
            if match and path.is_dir() and not path.name.endswith((".tmp", ".old")):
                found[int(match.group(1))] = path
    return found


def _checkpoint(run_dir: Path, task: int | None) -> tuple[int, Path]:
    found = task_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no task checkpoint yet (checkpoints/task_<N>_*): finish a task first")
    if task is None:
        task = max(found)
    if task not in found:
        raise ConfigError("--task", task, f"a finished task of this run: {choices(sorted(found))}")
    return task, found[task]


def check_push_target(repo: str | None) -> None:
    """Refuse a malformed repo id, or any upload while HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set."""
    from rankwise.backbones.hub import hub_offline, looks_like_hub_id

    if repo is None:
        return
    if not looks_like_hub_id(repo) or "/" not in repo:
        raise ConfigError("--push-to-hub", repo, "a Hub repo id 'user/name' or 'org/name'")
    if hub_offline():
        raise RankwiseError(
            f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; export without "
            f"--push-to-hub and upload the folder later with `hf upload {repo} DIR`"
        )


def push_folder(folder: Path, repo: str) -> str:
    """Upload `folder` to Hub model repo `repo` (created if missing); returns the repo URL."""
    check_push_target(repo)
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        url = api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="rankwise export")
    except Exception as exc:  # noqa: BLE001 - any network / auth / HTTP failure is one line
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankwiseError(
            f"--push-to-hub {repo}: the upload failed ({detail[:200]}); the export is in {folder} "
            f"(upload it later with `hf upload {repo} {folder}`)"
        ) from exc
    return str(url)


def _load(config: Any, checkpoint: Path) -> tuple[Any, torch.nn.Module]:
    """(backbone, model after the checkpoint's task): a RankwiseModel, or the plain model of a ``full`` run.

    A run over a quantized base (``backbone.quantize``) is rebuilt on the float base: its merged tasks
    are kept as exact factors, so ``merged`` folds them into the float weights (W + sum B A), as a
    float run would, and the other formats need no base weights."""
    options = config.backbone.config
    if getattr(options, "quantize", "none") != "none":
        options = dataclasses.replace(options, quantize="none")
    backbone = BACKBONES[config.backbone.name].load_factory()(options, torch.device("cpu"))
    return backbone, strategy_for(config.method.name).restore(backbone.model, checkpoint, torch.device("cpu"))


def _write_merged(backbone: Any, model: torch.nn.Module, folder: Path) -> None:
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if hasattr(model, "save_pretrained"):  # a transformers PreTrainedModel
        model.save_pretrained(folder)
        tokenizer = getattr(backbone, "tokenizer", None)
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(folder)
        source = Path(str(getattr(model, "name_or_path", "") or ""))
        if source.is_dir() and (source / "preprocessor_config.json").is_file():  # e.g. CLIP's image processor
            shutil.copyfile(source / "preprocessor_config.json", folder / "preprocessor_config.json")
        return
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    io.save_tensors(folder / "model.safetensors", state)


def export_run(
    run_dir: str | Path,
    to: str,
    out: str | Path | None = None,
    task: int | None = None,
    base_model: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the model after task `task` (default: the last finished) of the run in `run_dir`; see the module doc."""
    from rankwise.adapters.export import export_peft

    run_dir = Path(run_dir)
    if to not in FORMATS:
        raise ConfigError("--to", to, choices(FORMATS))
    check_push_target(push_to_hub)
    config = load_run_config(run_dir)
    strategy_for(config.method.name).check_export(config.method.name, to)
    index, checkpoint = _checkpoint(run_dir, task)
    target = Path(out) if out is not None else run_dir / "export" / f"{to}_task{index}"
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ConfigError("--out", str(target), "a new or empty folder (or pass --overwrite to replace it)")
    backbone, model = _load(config, checkpoint)

    def write(folder: Path) -> None:
        if to == "rankwise":
            model.save_pretrained(folder)
        elif to == "peft":
            name = base_model or getattr(backbone.model, "name_or_path", None) or None
            export_peft(model, folder, base_model_name_or_path=name,
                        task_type=getattr(backbone, "peft_task_type", None))  # fmt: skip
        else:
            _write_merged(backbone, model, folder)

    ckpt.write_dir_atomically(target, write)
    if push_to_hub is not None:
        push_folder(target, push_to_hub)
    return target
