"""`rankwise data check`: which MTIL / X-TAIL datasets a root holds, in which layout, and how to get the rest.

For every dataset and both conventions (torchvision, CoOp) the check looks for the files that
convention's loader reads (``mtil_datasets.SPECS``): all there and non-empty = present, some =
incomplete (the missing paths are listed), none = missing. A dataset is usable when at least one
convention is present; MNIST and CIFAR100 have only the torchvision layout. The CoOp files may sit
under CoOp's folder names or under the official CoDyRA / MoRAM code's (``coop_alt_paths``).
"""

from __future__ import annotations

from pathlib import Path

from rankwise.errors import ConfigError, choices
from rankwise.scenarios.mtil import ORDERS, XTAILConfig
from rankwise.scenarios.mtil_datasets import COOP_LOADERS, COOP_OBTAIN, SPECS

SCENARIOS = {"mtil": ORDERS["I"], "xtail": list(XTAILConfig.valid_datasets)}


def _exists(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() and path.stat().st_size > 0


def layout_status(root: Path, paths: tuple[str, ...]) -> tuple[str, list[str]]:
    """("present" | "incomplete" | "missing", missing paths) for the files one layout needs."""
    missing = [p for p in paths if not _exists(root / p)]
    if not missing:
        return "present", []
    return ("missing" if len(missing) == len(paths) else "incomplete"), missing


def check(scenario: str, root: str | Path) -> str:
    """A plain-text report: one block per dataset with its status per layout and steps for what is missing."""
    if scenario not in SCENARIOS:
        raise ConfigError("--scenario", scenario, choices(SCENARIOS))
    root = Path(root)
    if not root.is_dir():
        raise ConfigError("--root", str(root), "an existing folder (create it, then put the datasets in it)")
    lines = [f"{scenario} datasets under {root.resolve()}:"]
    usable = 0
    for key in SCENARIOS[scenario]:
        spec = SPECS[key]
        tv, tv_missing = layout_status(root, spec.torchvision_paths)
        if key in COOP_LOADERS:
            coop, coop_missing = layout_status(root, spec.coop_paths)
            if coop != "present" and spec.coop_alt_paths:
                alt, alt_missing = layout_status(root, spec.coop_alt_paths)
                if alt == "present" or (alt == "incomplete" and coop == "missing"):
                    coop, coop_missing = alt, alt_missing
        else:
            coop, coop_missing = "n/a (no CoOp split; the torchvision layout is used)", []
        ok = "present" in (tv, coop)
        usable += ok
        lines.append(f"  [{'ok' if ok else '--'}] {key:<11} {spec.title}: torchvision {tv}; coop {coop}")
        for name, status, missing in (("torchvision", tv, tv_missing), ("coop", coop, coop_missing)):
            if status == "incomplete":
                lines.append(f"        {name} layout lacks: {', '.join(missing)}")
        if not ok:
            lines.append(f"        to get it (torchvision layout): {spec.obtain.replace('ROOT', str(root))}")
            if key in COOP_LOADERS:
                folder = spec.coop_paths[0].split("/")[0]
                lines.append(
                    f"        or (coop layout): {COOP_OBTAIN.format(folder).replace('ROOT', str(root))}"
                )
    total = len(SCENARIOS[scenario])
    lines.append(f"{usable} of {total} datasets usable.")
    if usable < total:
        lines.append("Runs need every dataset of the scenario (or list a subset with scenario.datasets).")
    return "\n".join(lines)
