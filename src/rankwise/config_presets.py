"""Config presets by name: ``rankwise run text_mtil_quickstart`` from a source checkout or a wheel.

The repository's ``configs/`` folder is the one source of truth. The wheel carries the same files as
package data under ``rankwise/configs/`` (pyproject.toml maps the package ``rankwise.configs`` to the
``configs/`` folder), so an installed rankwise finds its presets without the repository; an editable
install finds them in the checkout. A run argument resolves in this order:

1. an existing file, as given (``configs/toy_codyra.yaml`` inside the checkout, ``./my.yaml``);
2. a preset name, with or without ``.yaml`` (``toy_codyra``);
3. ``configs/NAME.yaml`` that does not exist here (outside the checkout): the preset ``NAME``, so the
   README's commands also work from an installed wheel.

This module imports nothing heavy (no torch), so the lookup works before any backend is installed.
"""

from __future__ import annotations

import difflib
from pathlib import Path, PurePath

from rankwise.errors import ConfigError

SUFFIX = ".yaml"


def preset_dirs() -> list[Path]:
    """Folders holding the shipped presets: the wheel's package data, then a source checkout's ``configs/``."""
    package = Path(__file__).resolve().parent
    found = []
    for candidate in (package / "configs", package.parents[1] / "configs"):
        if candidate.is_dir() and any(candidate.glob("*" + SUFFIX)) and candidate not in found:
            found.append(candidate)
    return found


def preset_paths() -> dict[str, Path]:
    """Preset name -> file, first folder of `preset_dirs` winning on a shared name."""
    presets: dict[str, Path] = {}
    for folder in preset_dirs():
        for path in sorted(folder.glob("*" + SUFFIX)):
            presets.setdefault(path.stem, path)
    return presets


def _preset_name(argument: str) -> str | None:
    """The preset name `argument` may stand for: ``NAME``, ``NAME.yaml`` or ``configs/NAME.yaml``."""
    parts = PurePath(argument).parts
    if len(parts) == 2 and parts[0] == "configs":
        parts = parts[1:]
    if len(parts) != 1:
        return None
    name = parts[0]
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def resolve_config(argument: str | Path) -> Path:
    """The YAML file that a ``rankwise run`` argument names (see the module docstring for the order).

    Raises `ConfigError` naming the argument and the available presets when it is neither a file nor
    a preset.
    """
    path = Path(argument)
    if path.is_file():
        return path
    name = _preset_name(str(argument))
    presets = preset_paths()
    if name is not None and name in presets:
        return presets[name]
    close = difflib.get_close_matches(name or str(argument), list(presets), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        "config",
        str(argument),
        f"an existing YAML file or a preset name ({hint}{len(presets)} presets: `rankwise list`)",
    )
