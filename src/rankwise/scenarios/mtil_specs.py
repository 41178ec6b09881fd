"""Where each MTIL dataset's files live, per on-disk convention, and how to obtain them (data).

``torchvision_paths``: what torchvision's dataset class reads (``download=False``); ``coop_paths``:
CoOp's folder names (DATASETS.md); ``coop_alt_paths``: the same CoOp files under the folder names
the official CoDyRA / MoRAM X-TAIL code reads. ``rankwise data check`` and ``mtil_datasets`` use
these lists; ``templates`` are ZSCL's lists (``mtil_names``), kept here for older callers.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankwise.scenarios.mtil_names import CALTECH_TEMPLATES, CIFAR_TEMPLATES, ZSCL_TEMPLATES


@dataclass(frozen=True)
class DatasetSpec:
    """One MTIL dataset: its name, templates, and where each convention expects its files."""

    key: str
    title: str
    templates: list[str]
    torchvision_paths: tuple[str, ...]  # relative to root; all must exist
    coop_paths: tuple[str, ...]  # empty = no CoOp split (torchvision layout used instead)
    obtain: str  # how to get the torchvision layout
    coop_alt_paths: tuple[str, ...] = ()  # the same CoOp files under the official code's folder names


def _spec(
    key: str,
    title: str,
    templates: list[str],
    tv: tuple[str, ...],
    coop: tuple[str, ...],
    obtain: str,
    coop_alt: tuple[str, ...] = (),
) -> DatasetSpec:
    return DatasetSpec(key, title, templates, tv, coop, obtain, coop_alt)


_TV = "python -c \"import torchvision; torchvision.datasets.{}('ROOT', download=True{})\""
SPECS: dict[str, DatasetSpec] = {
    s.key: s
    for s in [
        _spec(
            "aircraft",
            "FGVC-Aircraft",
            ZSCL_TEMPLATES["aircraft"],
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
            (
                "fgvc-aircraft-2013b/data/images",
                "fgvc-aircraft-2013b/data/variants.txt",
                "fgvc-aircraft-2013b/data/images_variant_train.txt",
                "fgvc-aircraft-2013b/data/images_variant_test.txt",
            ),
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
            ("caltech101/101_ObjectCategories", "caltech101/split_zhou_Caltech101.json"),
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
            ZSCL_TEMPLATES["dtd"],
            ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/test1.txt"),
            ("dtd/images", "dtd/split_zhou_DescribableTextures.json"),
            _TV.format("DTD", "") + "; or extract https://www.robots.ox.ac.uk/~vgg/data/dtd/download/"
            "dtd-r1.0.1.tar.gz into ROOT/dtd/",
        ),
        _spec(
            "eurosat",
            "EuroSAT",
            ZSCL_TEMPLATES["eurosat"],
            ("eurosat/2750",),
            ("eurosat/2750", "eurosat/split_zhou_EuroSAT.json"),
            _TV.format("EuroSAT", "")
            + "; or extract EuroSAT.zip (RGB) so that ROOT/eurosat/2750/<Class>/ exist",
        ),
        _spec(
            "flowers",
            "Flowers102",
            ZSCL_TEMPLATES["flowers"],
            ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
            ("oxford_flowers/jpg", "oxford_flowers/split_zhou_OxfordFlowers.json"),
            _TV.format("Flowers102", "")
            + "; or put 102flowers.tgz's jpg/, imagelabels.mat and setid.mat from "
            "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into ROOT/flowers-102/",
            ("flowers-102/jpg", "flowers-102/split_zhou_OxfordFlowers.json"),
        ),
        _spec(
            "food",
            "Food101",
            ZSCL_TEMPLATES["food"],
            ("food-101/images", "food-101/meta/train.json", "food-101/meta/test.json"),
            ("food-101/images", "food-101/split_zhou_Food101.json"),
            _TV.format("Food101", "")
            + "; or extract http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz into ROOT",
        ),
        _spec(
            "mnist",
            "MNIST",
            ZSCL_TEMPLATES["mnist"],
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
            ZSCL_TEMPLATES["pets"],
            (
                "oxford-iiit-pet/images",
                "oxford-iiit-pet/annotations/trainval.txt",
                "oxford-iiit-pet/annotations/test.txt",
            ),
            ("oxford_pets/images", "oxford_pets/split_zhou_OxfordPets.json"),
            _TV.format("OxfordIIITPet", "") + "; or extract images.tar.gz and annotations.tar.gz from "
            "https://www.robots.ox.ac.uk/~vgg/data/pets/ into ROOT/oxford-iiit-pet/",
            ("oxford-iiit-pet/images", "oxford-iiit-pet/split_zhou_OxfordPets.json"),
        ),
        _spec(
            "cars",
            "StanfordCars",
            ZSCL_TEMPLATES["cars"],
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
            ZSCL_TEMPLATES["sun397"],
            ("SUN397/ClassName.txt",),
            ("sun397/SUN397", "sun397/split_zhou_SUN397.json"),
            _TV.format("SUN397", "")
            + "; or extract http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz "
            "into ROOT (ClassName.txt comes with torchvision's download)",
            ("SUN397/split_zhou_SUN397.json",),
        ),
    ]
}

COOP_OBTAIN = (
    "follow CoOp's DATASETS.md (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md): put the "
    "images and split_zhou_*.json under ROOT/{}"
)
