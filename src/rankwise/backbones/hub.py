"""Where a model path points: a local folder (which always wins) or a Hugging Face Hub id.

Every backbone option that names a model (``backbone.model_path``, ``backbone.path``, open_clip's
``hf-hub:`` names and ``pretrained`` tags) goes through `resolve_model_source`:

* an existing local path is used as it is, with ``local_files_only=True`` (no network, ever);
* otherwise a value shaped like a Hub id (``name`` or ``org/name``: letters, digits, ``_ . -``) is
  passed to ``from_pretrained`` as the id; it downloads (and caches) when online, and with
  ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set it is read from the local HF cache only;
* anything else (``/abs/missing``, ``./rel``, ``~/x``, ``a/b/c``) is a missing local path.

A Hub id that cannot be loaded (offline and not cached, or the download failed) becomes one
`ConfigError` line naming the field, the id, the reason and how to point at a local folder instead.
The offline switch is read from the environment at call time (huggingface_hub reads it once, at
import), so setting it in a running process takes effect here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankwise.errors import ConfigError

# huggingface_hub's repo-id rule: 1-96 characters of [A-Za-z0-9_.-] per part, at most one "/", no
# "--" or "..", not starting or ending with "-" or "."
_PART = r"(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_PART}(?:/{_PART})?")
_TRUE = {"1", "ON", "YES", "TRUE"}
HF_HUB_PREFIX = "hf-hub:"  # open_clip's prefix for a model (config + weights) from a Hub repo


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to 1 / on / yes / true."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_hub_id(value: str) -> bool:
    """``name`` or ``org/name`` in the Hub's repo-id alphabet (a path such as ``./x`` or ``/x`` is not)."""
    return bool(_HUB_ID.fullmatch(value)) and all(len(part) <= 96 for part in value.split("/"))


@dataclass(frozen=True)
class ModelSource:
    """A resolved model location: a local path, or a Hub id (`is_hub`)."""

    location: str
    is_hub: bool

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """``local_files_only=True`` for a local folder or when offline; nothing for an online Hub id."""
        return {} if self.is_hub and not hub_offline() else {"local_files_only": True}

    def auto_model_kwargs(self) -> dict[str, Any]:
        """`from_pretrained_kwargs` for ``AutoModel*`` classes, whose peft-adapter probe of a Hub id does
        not receive ``local_files_only`` (transformers 5) and would reach for the network offline."""
        kwargs = self.from_pretrained_kwargs()
        if self.is_hub and kwargs:
            kwargs["adapter_kwargs"] = {"local_files_only": True}
        return kwargs


def resolve_model_source(value: str | os.PathLike[str], field: str, expected_local: str) -> ModelSource:
    """A local path when it exists (it wins over a Hub id of the same spelling), else a Hub id.

    `expected_local` describes the local form for the error of a value that is neither.
    """
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.exists():
        return ModelSource(str(path), is_hub=False)
    if looks_like_hub_id(text):
        return ModelSource(text, is_hub=True)
    raise ConfigError(field, text, f"{expected_local}, or a Hugging Face Hub id such as 'org/name' (no such path)")


def _cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return "the HF cache"


def hub_load_error(
    field: str,
    shown: str,
    exc: BaseException | None = None,
    *,
    repo: str | None = None,
    local: str = "a local folder",
) -> ConfigError:
    """One line: why Hub model `shown` (no local path of that name) could not be loaded, and what to do.

    `repo` is the Hub repo behind `shown` (default: `shown` itself); `local` the local form to use instead.
    """
    repo = repo or shown
    if hub_offline():
        reason = f"HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache ({_cache_dir()})"
    else:
        detail = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "download failed"
        reason = f"it could not be downloaded ({detail[:200]})"
    return ConfigError(
        field,
        shown,
        f"a loadable model: no local path {shown!r} exists and from the Hub {reason}; download it once "
        f"online (it is then cached), or point {field} at {local} (e.g. `hf download {repo} --local-dir DIR`)",
    )


def snapshot_folder(
    repo_id: str, field: str, allow_patterns: list[str] | None = None, **error: str
) -> str:
    """The local snapshot folder of Hub repo `repo_id`: from the cache when offline, else downloaded.

    `error` (shown=, local=) adjusts the one-line error (see `hub_load_error`).
    """
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            repo_id, allow_patterns=allow_patterns, local_files_only=hub_offline(), cache_dir=_cache_dir()
        )
    except Exception as exc:  # noqa: BLE001 - every hub failure (offline, HTTP, not found) is one line
        raise hub_load_error(field, error.pop("shown", repo_id), exc, repo=repo_id, **error) from exc


# -- open_clip: `hf-hub:` names and `pretrained` tags -------------------------------------------------
def open_clip_hub_source(architecture: str, pretrained: str | None) -> tuple[str, str] | None:
    """(field, Hub name) when open_clip downloads something for these options, else None."""
    if architecture.startswith(HF_HUB_PREFIX):
        return "backbone.architecture", architecture
    if pretrained and not Path(pretrained).is_file():
        return "backbone.pretrained", pretrained
    return None


def cached_open_clip_folder(repo: str) -> str:
    """The cached snapshot of ``hf-hub:<repo>`` (offline), checked to hold open_clip's config."""
    field, shown, local = "backbone.architecture", f"{HF_HUB_PREFIX}{repo}", "'local-dir:DIR'"
    folder = snapshot_folder(repo, field, ["open_clip_config.json", "open_clip_*"], shown=shown, local=local)
    if not (Path(folder) / "open_clip_config.json").is_file():
        raise hub_load_error(field, shown, repo=repo, local=local)
    return folder


def cached_open_clip_weights(architecture: str, tag: str) -> str:
    """Offline: the cached weights file of open_clip tag `tag` (its ``hf_hub`` repo), as a local path."""
    import open_clip

    hf_hub = open_clip.get_pretrained_cfg(architecture, tag).get("hf_hub", "")
    # open_clip writes "org/repo/" (default file name) or "org/repo/file name"
    stripped = hf_hub.strip("/")
    repo, _, filename = stripped.rpartition("/") if stripped.count("/") > 1 else (stripped, "", "")
    field, local = "backbone.pretrained", "a local checkpoint file"
    if not repo:  # a tag served by URL only (open_clip's own cache), not by the Hub
        raise hub_load_error(field, tag, local=local)
    folder = Path(snapshot_folder(repo, field, [filename or "open_clip_*"], shown=tag, local=local))
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    found = next((folder / n for n in names if (folder / n).is_file()), None)
    if found is None:
        raise hub_load_error(field, tag, repo=repo, local=local)
    return str(found)
