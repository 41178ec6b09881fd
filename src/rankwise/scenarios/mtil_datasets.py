"""The 11 MTIL datasets: where their files are and how to read them, in two on-disk conventions.

``coop`` (default; what the official CoDyRA / MoRAM X-TAIL code reads): CoOp's split files
(Zhou et al., 2022), ``split_zhou_<Name>.json`` holding ``{"train"|"val"|"test": [[relative image
path, label, class name], ...]}``; class names come from the file; ``val`` is not used.
FGVC-Aircraft has no split file: ``variants.txt`` and ``images_variant_{train,test}.txt``. MNIST and
CIFAR100 have none either and use the torchvision layout, as the official code does. Each dataset is
found under CoOp's folder name (``caltech-101``, ``oxford_flowers``, ...) or under the folder name
the official code uses (``caltech101``, ``flowers-102``, ``oxford-iiit-pet``, ``SUN397``,
``fgvc-aircraft-2013b/data``); the files read are the same.

``torchvision``: the layouts torchvision's dataset classes read, loaded with ``download=False``, as
the ZSCL code base (Zheng et al., 2023) does: official train/test splits, except Caltech101, EuroSAT
and SUN397 which have none and get a seeded 80/20 split (``torch.randperm(n,
generator=manual_seed(split_seed))``, the first 80% train, exactly what ``torch.utils.data.random_split``
does; SUN397's file list is sorted first because torchvision lists it in filesystem order).

Loaders return the raw class names (folder / torchvision / split-file strings); ``load_dataset``
turns them into prompt names (``mtil_names``) and returns ``(class_names, train, test)`` as lists of
``(image, label)``, where an image is a file path or a uint8 array (MNIST, CIFAR100).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rankwise.errors import DataError
from rankwise.scenarios.mtil_names import (  # noqa: F401  (re-exported: older imports use this module)
    CALTECH_NAMES,
    CALTECH_TEMPLATES,
    CIFAR_TEMPLATES,
    EUROSAT_NAMES,
    FLOWERS_NAMES,
    PROMPT_MODES,
    ZSCL_TEMPLATES,
    official_names,
    spaced,
    zscl_names,
)
from rankwise.scenarios.mtil_specs import COOP_OBTAIN, SPECS, DatasetSpec  # noqa: F401

Samples = list[tuple[Any, int]]
Loaded = tuple[list[str], Samples, Samples]


def _tv(cls_name: str) -> Any:
    import torchvision.datasets as tvd

    return getattr(tvd, cls_name)


def seeded_split(samples: Samples, split_seed: int, ratio: float = 0.8) -> tuple[Samples, Samples]:
    """torch.utils.data.random_split(samples, [int(ratio n), rest], Generator().manual_seed(seed))."""
    n = len(samples)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    cut = int(ratio * n)
    return [samples[i] for i in perm[:cut]], [samples[i] for i in perm[cut:]]


def _pairs(files: list[Any], labels: list[int]) -> Samples:
    return [(str(f), int(y)) for f, y in zip(files, labels)]


# --- torchvision convention -----------------------------------------------------------------


def _tv_train_test(name: str, class_names: Sequence[str] | None = None) -> Callable[[Path, int], Loaded]:
    """A torchvision set with ``split="train" | "test"`` and ``_image_files`` / ``_labels`` lists; class
    names from the set's ``classes`` unless given."""

    def load(root: Path, seed: int) -> Loaded:
        tr, te = (_tv(name)(root, split=s, download=False) for s in ("train", "test"))
        names = list(tr.classes) if class_names is None else list(class_names)
        return names, _pairs(tr._image_files, tr._labels), _pairs(te._image_files, te._labels)

    return load


_tv_aircraft = _tv_train_test("FGVCAircraft")
_tv_dtd = _tv_train_test("DTD")
_tv_flowers = _tv_train_test("Flowers102", FLOWERS_NAMES)
_tv_food = _tv_train_test("Food101")


def _tv_caltech(root: Path, seed: int) -> Loaded:
    ds = _tv("Caltech101")(root, target_type="category", download=False)
    folder = Path(ds.root) / "101_ObjectCategories"
    samples = [(str(folder / ds.categories[y] / f"image_{i:04d}.jpg"), y) for i, y in zip(ds.index, ds.y)]
    return (list(ds.categories), *seeded_split(samples, seed))


def _tv_cifar100(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("CIFAR100")(root, train=t, download=False) for t in (True, False))
    return list(tr.classes), list(zip(tr.data, tr.targets)), list(zip(te.data, te.targets))


def _tv_eurosat(root: Path, seed: int) -> Loaded:
    ds = _tv("EuroSAT")(root, download=False)
    return (list(ds.classes), *seeded_split([(str(p), y) for p, y in ds.samples], seed))


def _tv_mnist(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("MNIST")(root, train=t, download=False) for t in (True, False))
    split = [list(zip(d.data.numpy(), d.targets.tolist())) for d in (tr, te)]
    return list(tr.classes), split[0], split[1]


def _tv_pets(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("OxfordIIITPet")(root, split=s, download=False) for s in ("trainval", "test"))
    return list(tr.classes), _pairs(tr._images, tr._labels), _pairs(te._images, te._labels)


def _tv_cars(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("StanfordCars")(root, split=s, download=False) for s in ("train", "test"))
    return list(tr.classes), list(tr._samples), list(te._samples)


def _tv_sun397(root: Path, seed: int) -> Loaded:
    ds = _tv("SUN397")(root, download=False)
    samples = sorted(_pairs(ds._image_files, ds._labels))
    return (list(ds.classes), *seeded_split(samples, seed))


# --- CoOp convention ------------------------------------------------------------------------


def read_coop_split(split_file: Path, image_dir: Path) -> Loaded:
    """Read a CoOp ``split_zhou_*.json``; class names are taken from the file, indexed by label."""
    data = json.loads(split_file.read_text())
    for part in ("train", "test"):
        if part not in data:
            raise DataError(f"{split_file} has no {part!r} list")
    names: dict[int, str] = {}
    out = []
    for part in ("train", "test"):
        items = []
        for entry in data[part]:
            path, label, name = entry
            names.setdefault(int(label), name)
            items.append((str(image_dir / path), int(label)))
        out.append(items)
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{split_file}: labels are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))], out[0], out[1]


def _coop_json(split_file: str, image_dir: str) -> Callable[[Path, int], Loaded]:
    def load(root: Path, seed: int) -> Loaded:
        return read_coop_split(root / split_file, root / image_dir)

    return load


def _coop_aircraft(folder: str) -> Callable[[Path, int], Loaded]:
    def load(root: Path, seed: int) -> Loaded:
        base = root / folder
        names = [line.strip() for line in (base / "variants.txt").read_text().splitlines() if line.strip()]
        index = {n: i for i, n in enumerate(names)}
        parts = []
        for split in ("train", "test"):
            items = []
            for line in (base / f"images_variant_{split}.txt").read_text().splitlines():
                if line.strip():
                    image, variant = line.strip().split(" ", 1)
                    items.append((str(base / "images" / f"{image}.jpg"), index[variant]))
            parts.append(items)
        return names, parts[0], parts[1]

    return load


TORCHVISION_LOADERS: dict[str, Callable[[Path, int], Loaded]] = {
    "aircraft": _tv_aircraft,
    "caltech101": _tv_caltech,
    "cifar100": _tv_cifar100,
    "dtd": _tv_dtd,
    "eurosat": _tv_eurosat,
    "flowers": _tv_flowers,
    "food": _tv_food,
    "mnist": _tv_mnist,
    "pets": _tv_pets,
    "cars": _tv_cars,
    "sun397": _tv_sun397,
}
COOP_LOADERS: dict[str, Callable[[Path, int], Loaded]] = {
    "aircraft": _coop_aircraft("fgvc_aircraft"),
    "caltech101": _coop_json("caltech-101/split_zhou_Caltech101.json", "caltech-101/101_ObjectCategories"),
    "dtd": _coop_json("dtd/split_zhou_DescribableTextures.json", "dtd/images"),
    "eurosat": _coop_json("eurosat/split_zhou_EuroSAT.json", "eurosat/2750"),
    "flowers": _coop_json("oxford_flowers/split_zhou_OxfordFlowers.json", "oxford_flowers/jpg"),
    "food": _coop_json("food-101/split_zhou_Food101.json", "food-101/images"),
    "pets": _coop_json("oxford_pets/split_zhou_OxfordPets.json", "oxford_pets/images"),
    "cars": _coop_json("stanford_cars/split_zhou_StanfordCars.json", "stanford_cars"),
    "sun397": _coop_json("sun397/split_zhou_SUN397.json", "sun397/SUN397"),
}
# The same files under the folder names the official CoDyRA / MoRAM code reads (spec.coop_alt_paths).
COOP_ALT_LOADERS: dict[str, Callable[[Path, int], Loaded]] = {
    "aircraft": _coop_aircraft("fgvc-aircraft-2013b/data"),
    "caltech101": _coop_json("caltech101/split_zhou_Caltech101.json", "caltech101/101_ObjectCategories"),
    "flowers": _coop_json("flowers-102/split_zhou_OxfordFlowers.json", "flowers-102/jpg"),
    "pets": _coop_json("oxford-iiit-pet/split_zhou_OxfordPets.json", "oxford-iiit-pet/images"),
    "sun397": _coop_json("SUN397/split_zhou_SUN397.json", "SUN397"),
}


def _missing(root: Path, paths: tuple[str, ...]) -> list[str]:
    return [p for p in paths if not (root / p).exists()]


def _relabel(names: list[str | None], train: Samples, test: Samples) -> Loaded:
    """Drop the classes named None (absent from the official data) and renumber the rest 0..C-1."""
    if all(n is not None for n in names):
        return [str(n) for n in names], train, test
    new = {}
    for old, name in enumerate(names):
        if name is not None:
            new[old] = len(new)
    kept = [str(n) for n in names if n is not None]
    return kept, *([(x, new[y]) for x, y in part if y in new] for part in (train, test))


def load_dataset(
    key: str, root: str | Path, convention: str, split_seed: int, prompts: str = "zscl"
) -> tuple[Loaded, str]:
    """Load one dataset; returns its data and the convention actually used (MNIST/CIFAR100: torchvision).

    ``prompts`` picks the class names (``mtil_names``): ``zscl`` (split-file names under ``coop``,
    ZSCL's names under ``torchvision``) or ``official`` (the official X-TAIL code's names).
    """
    root = Path(root)
    spec = SPECS[key]
    used = "coop" if convention == "coop" and key in COOP_LOADERS else "torchvision"
    if used == "coop":
        needed, loader = spec.coop_paths, COOP_LOADERS[key]
        if _missing(root, needed) and spec.coop_alt_paths and not _missing(root, spec.coop_alt_paths):
            needed, loader = spec.coop_alt_paths, COOP_ALT_LOADERS[key]
    else:
        needed, loader = spec.torchvision_paths, TORCHVISION_LOADERS[key]
    missing = _missing(root, needed)
    if missing:
        hint = COOP_OBTAIN.format(needed[0].split("/")[0]) if used == "coop" else spec.obtain
        also = f" (or {', '.join(spec.coop_alt_paths)})" if used == "coop" and spec.coop_alt_paths else ""
        raise DataError(
            f"{spec.title} ({used} layout) is missing {', '.join(str(root / p) for p in missing)}{also}; "
            f"to get it: {hint}. `rankwise data check --root {root}` lists all datasets."
        )
    try:
        raw, train, test = loader(root, split_seed)
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{spec.title} under {root} ({used} layout) could not be read: {exc}") from exc
    if prompts == "official":
        return _relabel(official_names(key, raw, from_split_file=used == "coop"), train, test), used
    return (raw if used == "coop" else zscl_names(key, raw), train, test), used
