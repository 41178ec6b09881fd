"""The 11 MTIL datasets: class names, prompt templates and loaders for two on-disk conventions.

``torchvision``: the layouts torchvision's dataset classes read, loaded with ``download=False``.
Class names and splits follow the ZSCL code base (Zheng et al., 2023) that MTIL comes from:
official train/test splits, except Caltech101, EuroSAT and SUN397 which have none and get a seeded
80/20 split (``torch.randperm(n, generator=manual_seed(split_seed))``, the first 80% train, exactly
what ``torch.utils.data.random_split`` does; SUN397's file list is sorted first because torchvision
lists it in filesystem order).

``coop``: the CoOp layout (Zhou et al., 2022): ``<dataset_dir>/split_zhou_<Name>.json`` holding
``{"train"|"val"|"test": [[relative image path, label, class name], ...]}``; class names come from
the file. FGVC-Aircraft uses CoOp's ``fgvc_aircraft`` folder (``variants.txt``,
``images_variant_{train,test}.txt``); MNIST and CIFAR100 have no CoOp split and fall back to the
torchvision layout (recorded in each task's ``info``).

Each loader returns ``(class_names, train, test)`` as lists of ``(image, label)``, where an image is
a file path or a uint8 array (MNIST, CIFAR100).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rankwise.errors import DataError

Samples = list[tuple[Any, int]]
Loaded = tuple[list[str], Samples, Samples]

CIFAR_TEMPLATES = [
    t
    for a in ("a", "the")
    for t in [
        f"a {q}photo of {a} {{}}."
        for q in ("", "blurry ", "black and white ", "low contrast ", "high contrast ", "bad ", "good ")
    ]
    + [f"a photo of {a} small {{}}.", f"a photo of {a} big {{}}."]
]
CALTECH_TEMPLATES = [
    t.format(a=a)
    for a in ("a", "the")
    for t in (
        "a photo of {a} {{}}.",
        "a painting of {a} {{}}.",
        "{a} plastic {{}}.",
        "a sculpture of {a} {{}}.",
        "a sketch of {a} {{}}.",
        "a tattoo of {a} {{}}.",
        "{a} toy {{}}.",
        "a rendition of {a} {{}}.",
        "{a} embroidered {{}}.",
        "{a} cartoon {{}}.",
        "{a} {{}} in a video game.",
        "{a} plushie {{}}.",
        "{a} origami {{}}.",
        "art of {a} {{}}.",
        "graffiti of {a} {{}}.",
        "a drawing of {a} {{}}.",
        "a doodle of {a} {{}}.",
    )
]
# Caltech101 folder names whose MTIL class name is not just the folder name with spaces.
CALTECH_NAMES = {
    "Faces": "off-center face",
    "Faces_easy": "centered face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
    "airplanes": "airplane",
    "car_side": "side of a car",
    "cougar_body": "body of a cougar cat",
    "cougar_face": "face of a cougar cat",
    "crocodile_head": "head of a  crocodile",
    "flamingo_head": "head of a flamingo",
    "snoopy": "snoopy (cartoon beagle)",
    "yin_yang": "yin and yang symbol",
}
EUROSAT_NAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}
FLOWERS_NAMES = (
    "pink primrose|hard-leaved pocket orchid|canterbury bells|sweet pea|english marigold|tiger lily|"
    "moon orchid|bird of paradise|monkshood|globe thistle|snapdragon|colt's foot|king protea|spear thistle|"
    "yellow iris|globe-flower|purple coneflower|peruvian lily|balloon flower|giant white arum lily|fire lily|"
    "pincushion flower|fritillary|red ginger|grape hyacinth|corn poppy|prince of wales feathers|"
    "stemless gentian|artichoke|sweet william|carnation|garden phlox|love in the mist|mexican aster|"
    "alpine sea holly|ruby-lipped cattleya|cape flower|great masterwort|siam tulip|lenten rose|"
    "barbeton daisy|daffodil|sword lily|poinsettia|bolero deep blue|wallflower|marigold|buttercup|"
    "oxeye daisy|common dandelion|petunia|wild pansy|primula|sunflower|pelargonium|bishop of llandaff|gaura|"
    "geranium|orange dahlia|pink-yellow dahlia|cautleya spicata|japanese anemone|black-eyed susan|"
    "silverbush|californian poppy|osteospermum|spring crocus|bearded iris|windflower|tree poppy|gazania|"
    "azalea|water lily|rose|thorn apple|morning glory|passion flower|lotus|toad lily|anthurium|frangipani|"
    "clematis|hibiscus|columbine|desert-rose|tree mallow|magnolia|cyclamen|watercress|canna lily|"
    "hippeastrum|bee balm|ball moss|foxglove|bougainvillea|camellia|mallow|mexican petunia|bromelia|"
    "blanket flower|trumpet creeper|blackberry lily"
).split("|")


def spaced(name: str) -> str:
    return name.replace("_", " ")


@dataclass(frozen=True)
class DatasetSpec:
    """One MTIL dataset: its name, templates, and where each convention expects its files."""

    key: str
    title: str
    templates: list[str]
    torchvision_paths: tuple[str, ...]  # relative to root; all must exist
    coop_paths: tuple[str, ...]  # empty = no CoOp split (torchvision layout used instead)
    obtain: str  # how to get the torchvision layout


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


def _tv_aircraft(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("FGVCAircraft")(root, split=s, download=False) for s in ("train", "test"))
    return (
        [spaced(c) for c in tr.classes],
        _pairs(tr._image_files, tr._labels),
        _pairs(te._image_files, te._labels),
    )


def _tv_caltech(root: Path, seed: int) -> Loaded:
    ds = _tv("Caltech101")(root, target_type="category", download=False)
    folder = Path(ds.root) / "101_ObjectCategories"
    samples = [(str(folder / ds.categories[y] / f"image_{i:04d}.jpg"), y) for i, y in zip(ds.index, ds.y)]
    names = [CALTECH_NAMES.get(c, spaced(c)) for c in ds.categories]
    return (names, *seeded_split(samples, seed))


def _tv_cifar100(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("CIFAR100")(root, train=t, download=False) for t in (True, False))
    return [spaced(c) for c in tr.classes], list(zip(tr.data, tr.targets)), list(zip(te.data, te.targets))


def _tv_dtd(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("DTD")(root, split=s, download=False) for s in ("train", "test"))
    return (
        [spaced(c) for c in tr.classes],
        _pairs(tr._image_files, tr._labels),
        _pairs(te._image_files, te._labels),
    )


def _tv_eurosat(root: Path, seed: int) -> Loaded:
    ds = _tv("EuroSAT")(root, download=False)
    names = [EUROSAT_NAMES.get(c, re.sub(r"(\w)([A-Z])", r"\1 \2", c).lower()) for c in ds.classes]
    return (names, *seeded_split([(str(p), y) for p, y in ds.samples], seed))


def _tv_flowers(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("Flowers102")(root, split=s, download=False) for s in ("train", "test"))
    return list(FLOWERS_NAMES), _pairs(tr._image_files, tr._labels), _pairs(te._image_files, te._labels)


def _tv_food(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("Food101")(root, split=s, download=False) for s in ("train", "test"))
    return (
        [spaced(c) for c in tr.classes],
        _pairs(tr._image_files, tr._labels),
        _pairs(te._image_files, te._labels),
    )


def _tv_mnist(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("MNIST")(root, train=t, download=False) for t in (True, False))
    split = [list(zip(d.data.numpy(), d.targets.tolist())) for d in (tr, te)]
    return [spaced(c) for c in tr.classes], split[0], split[1]


def _tv_pets(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("OxfordIIITPet")(root, split=s, download=False) for s in ("trainval", "test"))
    return [spaced(c) for c in tr.classes], _pairs(tr._images, tr._labels), _pairs(te._images, te._labels)


def _tv_cars(root: Path, seed: int) -> Loaded:
    tr, te = (_tv("StanfordCars")(root, split=s, download=False) for s in ("train", "test"))
    return [spaced(c) for c in tr.classes], list(tr._samples), list(te._samples)


def _tv_sun397(root: Path, seed: int) -> Loaded:
    ds = _tv("SUN397")(root, download=False)
    samples = sorted(_pairs(ds._image_files, ds._labels))
    return ([spaced(c) for c in ds.classes], *seeded_split(samples, seed))


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


def _coop_json(folder: str, image_dir: str, split: str) -> Callable[[Path, int], Loaded]:
    def load(root: Path, seed: int) -> Loaded:
        base = root / folder
        return read_coop_split(base / f"split_zhou_{split}.json", base / image_dir)

    return load


def _coop_aircraft(root: Path, seed: int) -> Loaded:
    base = root / "fgvc_aircraft"
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


def _spec(
    key: str, title: str, templates: list[str], tv: tuple[str, ...], coop: tuple[str, ...], obtain: str
):
    return DatasetSpec(key, title, templates, tv, coop, obtain)


_TV = "python -c \"import torchvision; torchvision.datasets.{}('ROOT', download=True{})\""
SPECS: dict[str, DatasetSpec] = {
    s.key: s
    for s in [
        _spec(
            "aircraft",
            "FGVC-Aircraft",
            ["a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."],
            (
                "fgvc-aircraft-2013b/data/images",
                "fgvc-aircraft-2013b/data/variants.txt",
                "fgvc-aircraft-2013b/data/images_variant_train.txt",
                "fgvc-aircraft-2013b/data/images_variant_test.txt",
            ),
            (
                "fgvc_aircraft/images",
                "fgvc_aircraft/variants.txt",
                "fgvc_aircraft/images_variant_train.txt",
                "fgvc_aircraft/images_variant_test.txt",
            ),
            _TV.format("FGVCAircraft", "")
            + "; or extract https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"
            "archives/fgvc-aircraft-2013b.tar.gz into ROOT",
        ),
        _spec(
            "caltech101",
            "Caltech101",
            CALTECH_TEMPLATES,
            ("caltech101/101_ObjectCategories",),
            ("caltech-101/101_ObjectCategories", "caltech-101/split_zhou_Caltech101.json"),
            _TV.format("Caltech101", "")
            + "; or extract 101_ObjectCategories.tar.gz (https://data.caltech.edu/"
            "records/mzrjq-6wc02) into ROOT/caltech101/",
        ),
        _spec(
            "cifar100",
            "CIFAR100",
            CIFAR_TEMPLATES,
            ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
            (),
            _TV.format("CIFAR100", "") + "; or extract https://www.cs.toronto.edu/"
            "~kriz/cifar-100-python.tar.gz into ROOT",
        ),
        _spec(
            "dtd",
            "DTD",
            [
                f"a photo of {a} {{}} {w}."
                for a in ("a", "the")
                for w in ("texture", "pattern", "thing", "object")
            ],
            ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/test1.txt"),
            ("dtd/images", "dtd/split_zhou_DescribableTextures.json"),
            _TV.format("DTD", "") + "; or extract https://www.robots.ox.ac.uk/~vgg/data/dtd/download/"
            "dtd-r1.0.1.tar.gz into ROOT/dtd/",
        ),
        _spec(
            "eurosat",
            "EuroSAT",
            [f"a centered satellite photo of {a}{{}}." for a in ("", "a ", "the ")],
            ("eurosat/2750",),
            ("eurosat/2750", "eurosat/split_zhou_EuroSAT.json"),
            _TV.format("EuroSAT", "")
            + "; or extract EuroSAT.zip (RGB) so that ROOT/eurosat/2750/<Class>/ exist",
        ),
        _spec(
            "flowers",
            "Flowers102",
            ["a photo of a {}, a type of flower."],
            ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
            ("oxford_flowers/jpg", "oxford_flowers/split_zhou_OxfordFlowers.json"),
            _TV.format("Flowers102", "")
            + "; or put 102flowers.tgz's jpg/, imagelabels.mat and setid.mat from "
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into ROOT/flowers-102/",
        ),
        _spec(
            "food",
            "Food101",
            ["a photo of a {}, a type of food."],
            ("food-101/images", "food-101/meta/train.json", "food-101/meta/test.json"),
            ("food-101/images", "food-101/split_zhou_Food101.json"),
            _TV.format("Food101", "")
            + "; or extract http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz into ROOT",
        ),
        _spec(
            "mnist",
            "MNIST",
            ['a photo of the number: "{}".'],
            tuple(
                f"MNIST/raw/{f}"
                for f in (
                    "train-images-idx3-ubyte",
                    "train-labels-idx1-ubyte",
                    "t10k-images-idx3-ubyte",
                    "t10k-labels-idx1-ubyte",
                )
            ),
            (),
            _TV.format("MNIST", "") + "; or gunzip the four idx files into ROOT/MNIST/raw/",
        ),
        _spec(
            "pets",
            "OxfordPet",
            ["a photo of a {}, a type of pet."],
            (
                "oxford-iiit-pet/images",
                "oxford-iiit-pet/annotations/trainval.txt",
                "oxford-iiit-pet/annotations/test.txt",
            ),
            ("oxford_pets/images", "oxford_pets/split_zhou_OxfordPets.json"),
            _TV.format("OxfordIIITPet", "") + "; or extract images.tar.gz and annotations.tar.gz from "
            "https://www.robots.ox.ac.uk/~vgg/data/pets/ into ROOT/oxford-iiit-pet/",
        ),
        _spec(
            "cars",
            "StanfordCars",
            [
                "a photo of a {}, a type of car.",
                "a photo of a {}.",
                "a photo of the {}.",
                "a photo of my {}.",
                "i love my {}!",
                "a photo of my dirty {}.",
                "a photo of my clean {}.",
                "a photo of my new {}.",
                "a photo of my old {}.",
            ],
            (
                "stanford_cars/devkit/cars_meta.mat",
                "stanford_cars/devkit/cars_train_annos.mat",
                "stanford_cars/cars_train",
                "stanford_cars/cars_test",
                "stanford_cars/cars_test_annos_withlabels.mat",
            ),
            (
                "stanford_cars/split_zhou_StanfordCars.json",
                "stanford_cars/cars_train",
                "stanford_cars/cars_test",
            ),
            "the original site is gone; get cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat "
            "(e.g. the Kaggle mirror 'jessicali9530/stanford-cars-dataset') into ROOT/stanford_cars/",
        ),
        _spec(
            "sun397",
            "SUN397",
            ["a photo of a {}.", "a photo of the {}."],
            ("SUN397/ClassName.txt",),
            ("sun397/SUN397", "sun397/split_zhou_SUN397.json"),
            _TV.format("SUN397", "")
            + "; or extract http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz "
            "into ROOT (ClassName.txt comes with torchvision's download)",
        ),
    ]
}

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
    "aircraft": _coop_aircraft,
    "caltech101": _coop_json("caltech-101", "101_ObjectCategories", "Caltech101"),
    "dtd": _coop_json("dtd", "images", "DescribableTextures"),
    "eurosat": _coop_json("eurosat", "2750", "EuroSAT"),
    "flowers": _coop_json("oxford_flowers", "jpg", "OxfordFlowers"),
    "food": _coop_json("food-101", "images", "Food101"),
    "pets": _coop_json("oxford_pets", "images", "OxfordPets"),
    "cars": _coop_json("stanford_cars", "", "StanfordCars"),
    "sun397": _coop_json("sun397", "SUN397", "SUN397"),
}
COOP_OBTAIN = (
    "follow CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md): put the "
    "images and split_zhou_*.json under ROOT/{}"
)


def load_dataset(key: str, root: str | Path, convention: str, split_seed: int) -> tuple[Loaded, str]:
    """Load one dataset; returns its data and the convention actually used (MNIST/CIFAR100: torchvision)."""
    root = Path(root)
    spec = SPECS[key]
    used = "coop" if convention == "coop" and key in COOP_LOADERS else "torchvision"
    needed = spec.coop_paths if used == "coop" else spec.torchvision_paths
    missing = [p for p in needed if not (root / p).exists()]
    if missing:
        hint = COOP_OBTAIN.format(needed[0].split("/")[0]) if used == "coop" else spec.obtain
        raise DataError(
            f"{spec.title} ({used} layout) is missing {', '.join(str(root / p) for p in missing)}; "
            f"to get it: {hint}. `rankwise data check --root {root}` lists all datasets."
        )
    loader = COOP_LOADERS[key] if used == "coop" else TORCHVISION_LOADERS[key]
    try:
        return loader(root, split_seed), used
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{spec.title} under {root} ({used} layout) could not be read: {exc}") from exc
