"""Image-folder tasks: generated trees, the real shared images, idx files, MNIST-5k."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rankwise.errors import ConfigError, DataError
from rankwise.scenarios.images import (
    FASHION_MNIST_DIR,
    ImageFolderConfig,
    build_scenario,
    class_name,
    read_idx,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "images"


def tree(root: Path, task: str, classes: dict[str, int], test: int = 1) -> None:
    for split, n in (("train", None), ("test", test)):
        for c, count in classes.items():
            for i in range(n or count):
                p = root / task / split / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(p)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_class_names_from_folders() -> None:
    assert class_name("14_stop") == "stop"
    assert class_name("speed_limit_20kmh") == "speed limit 20kmh"
    assert class_name("00_speed_limit_20kmh") == "speed limit 20kmh"
    assert class_name("car_side") == "car side"


def test_generated_tree_labels_shots_and_caps(tmp_path: Path) -> None:
    tree(tmp_path, "signs", {"14_stop": 5, "02_yield": 3}, test=2)
    tree(tmp_path, "other", {"a_b": 2}, test=1)
    cfg = ImageFolderConfig(root=str(tmp_path), shots=2, templates={"signs": ["a {} sign."]})
    assert cfg.tasks == ["other", "signs"]
    other, signs = build_scenario(cfg, seed=0)
    assert signs.class_names == ["yield", "stop"]  # sorted folder order: 02_yield, 14_stop
    assert [e.label for e in signs.train] == [0, 0, 1, 1]
    assert all(
        Path(e.input).parent.name == ["02_yield", "14_stop"][e.label] for e in signs.train + signs.test
    )
    assert len(signs.test) == 4 and signs.templates == ["a {} sign."]
    assert other.class_names == ["a b"] and other.templates == ["a photo of a {}."]
    capped = build_scenario(ImageFolderConfig(root=str(tmp_path), tasks=["signs"], max_test_per_task=3), 0)[0]
    assert len(capped.test) == 3 and len(capped.train) == 8


def test_tree_errors(tmp_path: Path) -> None:
    tree(tmp_path, "t", {"x": 1}, test=1)
    (tmp_path / "t" / "test" / "y").mkdir()
    with pytest.raises(DataError, match=r"class folders \['y'\]"):
        build_scenario(ImageFolderConfig(root=str(tmp_path)), 0)
    with pytest.raises(ConfigError, match="scenario.tasks"):
        ImageFolderConfig(root=str(tmp_path), tasks=["nope"])
    with pytest.raises(ConfigError, match="scenario.templates"):
        ImageFolderConfig(root=str(tmp_path), templates=["no placeholder"])
    with pytest.raises(ConfigError, match="scenario.root"):
        ImageFolderConfig(root=str(tmp_path / "missing"))
    (tmp_path / "u" / "train" / "x").mkdir(parents=True)
    (tmp_path / "u" / "test").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        build_scenario(ImageFolderConfig(root=str(tmp_path), tasks=["u"]), 0)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data/images not present")
def test_shared_images() -> None:
    tasks = build_scenario(ImageFolderConfig(root=str(SHARED), tasks=["gtsrb", "dtd10", "cifar10"]), seed=0)
    gtsrb, dtd, cifar = tasks
    assert len(gtsrb.class_names) == 43 and gtsrb.class_names[14] == "stop"
    assert (len(gtsrb.train), len(gtsrb.test)) == (4300, 1290)
    assert (len(dtd.train), len(dtd.test)) == (800, 400)
    assert cifar.class_names == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert "traffic sign" in gtsrb.templates[0] and cifar.templates[0] == "a photo of a {}."


def test_idx_reader_plain_and_gzip(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x-idx3-ubyte").write_bytes(idx_bytes(a))
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), a)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01")
    with pytest.raises(DataError, match="not a uint8 idx"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(a)[:-1])
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_idx_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (tmp_path / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (tmp_path / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(n) % 10)))
        if split == "train":
            first = images
    task = build_scenario(ImageFolderConfig(tasks=["fashion-mnist"], fashion_mnist_dir=str(tmp_path)), 0)[0]
    assert task.class_names[0] == "T-shirt/top" and task.class_names[9] == "ankle boot"
    assert [e.label for e in task.train] == [0, 1, 2, 3, 4, 5] and len(task.test) == 4
    assert np.array_equal(task.train[2].input, first[2])
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_scenario(ImageFolderConfig(tasks=["fashion-mnist"], fashion_mnist_dir=str(tmp_path / "no")), 0)


def test_mnist_5k_stratified_split() -> None:
    task = build_scenario(ImageFolderConfig(tasks=["mnist-5k"]), seed=0)[0]
    assert len(task.train) + len(task.test) == 5000 and len(task.test) == 1000
    test_counts = np.bincount([e.label for e in task.test], minlength=10)
    train_counts = np.bincount([e.label for e in task.train], minlength=10)
    assert np.all(np.abs(test_counts - np.round(0.2 * (test_counts + train_counts))) == 0)
    assert task.train[0].input.shape == (28, 28) and task.train[0].input.dtype == np.uint8


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian_package() -> None:
    task = build_scenario(ImageFolderConfig(tasks=["fashion-mnist"], max_test_per_task=500), seed=0)[0]
    assert task.info["num_train"] == 60000 and task.info["num_test"] == 500
    counts = np.bincount([e.label for e in task.train], minlength=10)
    assert counts.tolist() == [6000] * 10  # Fashion-MNIST's training set is balanced
    assert task.train[0].input.shape == (28, 28)
