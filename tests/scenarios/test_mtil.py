"""MTIL / X-TAIL loaders on tiny fixture datasets written in each official on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rankwise.errors import ConfigError, DataError
from rankwise.scenarios import data_check
from rankwise.scenarios.mtil import MTILConfig, XTAILConfig, build_mtil, build_xtail, few_shot
from rankwise.scenarios.mtil_datasets import load_dataset

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def img(path: Path, k: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), COLORS[k % len(COLORS)]).save(path)
    return str(path)


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


# --- fixture writers, one per official layout ---------------------------------------------------
DTD_CLASSES = ["banded", "braided", "cracked"]


def make_dtd_torchvision(root: Path, per_split: int = 3) -> None:
    base = root / "dtd" / "dtd"
    for split in ("train", "val", "test"):
        lines = []
        for k, c in enumerate(DTD_CLASSES):
            for i in range(per_split):
                name = f"{c}_{split}_{i}.jpg"
                img(base / "images" / c / name, k)
                lines.append(f"{c}/{name}")
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def make_dtd_coop(root: Path) -> None:
    base = root / "dtd"
    split = {}
    for part, n in (("train", 4), ("val", 1), ("test", 2)):
        split[part] = []
        for k, c in enumerate(DTD_CLASSES):
            for i in range(n):
                rel = f"{c}/{c}_{part}_{i}.jpg"
                img(base / "images" / rel, k)
                split[part].append([rel, k, c])
    (base / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))


EUROSAT = ["AnnualCrop", "Forest", "SeaLake"]


def make_eurosat_torchvision(root: Path, n: int = 5) -> None:
    for k, c in enumerate(EUROSAT):
        for i in range(n):
            img(root / "eurosat" / "2750" / c / f"{c}_{i + 1}.jpg", k)


def make_caltech_torchvision(root: Path) -> None:
    folder = root / "caltech101" / "101_ObjectCategories"
    for k, c in enumerate(["BACKGROUND_Google", "accordion", "car_side", "Faces"]):
        for i in range(3):
            img(folder / c / f"image_{i + 1:04d}.jpg", k)


def make_mnist_torchvision(root: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % 10
    for split, sl in (("train", slice(0, 8)), ("t10k", slice(8, 12))):
        write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", images[sl])
        write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels[sl])
    return images, labels


def make_sun397_torchvision(root: Path, n: int = 5) -> None:
    base = root / "SUN397"
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bedroom"]
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("\n".join(classes) + "\n")
    for k, c in enumerate(classes):
        for i in range(n):
            img(base / c.strip("/") / f"sun_{k}{i:03d}.jpg", k)


AIRCRAFT = ["707-320", "Cessna 172", "DC-3"]


def make_aircraft(root: Path, folder: str) -> None:
    base = root / folder
    base.mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(AIRCRAFT) + "\n")
    for split, start in (("train", 0), ("val", 50), ("test", 100)):
        lines = []
        for k, v in enumerate(AIRCRAFT):
            for i in range(2):
                image_id = f"{start + 10 * k + i:07d}"
                img(base / "images" / f"{image_id}.jpg", k)
                lines.append(f"{image_id} {v}")
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


# --- torchvision convention ---------------------------------------------------------------------
def test_dtd_torchvision_layout(tmp_path: Path) -> None:
    make_dtd_torchvision(tmp_path)
    (names, train, test), used = load_dataset("dtd", tmp_path, "torchvision", 42)
    assert used == "torchvision" and names == DTD_CLASSES
    assert len(train) == 9 and len(test) == 9
    for path, label in train + test:
        assert Path(path).parent.name == DTD_CLASSES[label] and Path(path).is_file()
    assert all("_train_" in p for p, _ in train) and all("_test_" in p for p, _ in test)


def test_eurosat_80_20_split_matches_random_split(tmp_path: Path) -> None:
    make_eurosat_torchvision(tmp_path)
    (names, train, test), _ = load_dataset("eurosat", tmp_path, "torchvision", 42)
    assert names == ["annual crop land", "forest", "lake or sea"]
    assert (len(train), len(test)) == (12, 3)
    # independent reference: what ZSCL does, random_split over the ImageFolder order with seed 42
    order = sorted((c, f"{c}_{i + 1}.jpg") for c in EUROSAT for i in range(5))
    ref_train, ref_test = torch.utils.data.random_split(
        order, [12, 3], generator=torch.Generator().manual_seed(42)
    )
    assert [Path(p).name for p, _ in train] == [order[i][1] for i in ref_train.indices]
    assert [Path(p).name for p, _ in test] == [order[i][1] for i in ref_test.indices]
    for path, label in train + test:
        assert Path(path).parent.name == EUROSAT[label]
    (_, train7, _), _ = load_dataset("eurosat", tmp_path, "torchvision", 7)
    assert train7 != train


def test_caltech_torchvision_names_and_background_dropped(tmp_path: Path) -> None:
    make_caltech_torchvision(tmp_path)
    (names, train, test), _ = load_dataset("caltech101", tmp_path, "torchvision", 42)
    assert names == ["off-center face", "accordion", "side of a car"]  # sorted: Faces, accordion, car_side
    assert len(train) + len(test) == 9 and len(train) == 7
    folders = ["Faces", "accordion", "car_side"]
    assert all(Path(p).parent.name == folders[y] and Path(p).is_file() for p, y in train + test)


def test_mnist_torchvision_idx(tmp_path: Path) -> None:
    images, labels = make_mnist_torchvision(tmp_path)
    (names, train, test), _ = load_dataset("mnist", tmp_path, "torchvision", 42)
    assert names[:2] == ["0 - zero", "1 - one"] and len(names) == 10
    assert [y for _, y in train] == labels[:8].tolist() and [y for _, y in test] == labels[8:].tolist()
    assert np.array_equal(train[3][0], images[3]) and np.array_equal(test[1][0], images[9])


def test_sun397_sorted_then_split(tmp_path: Path) -> None:
    make_sun397_torchvision(tmp_path)
    (names, train, test), _ = load_dataset("sun397", tmp_path, "torchvision", 42)
    assert names == ["abbey", "apartment building/outdoor", "bedroom"]
    assert (len(train), len(test)) == (12, 3)
    everything = sorted(train + test)
    assert all(Path(p).name.startswith(f"sun_{y}") for p, y in everything)


def test_aircraft_both_conventions_agree(tmp_path: Path) -> None:
    make_aircraft(tmp_path, "fgvc-aircraft-2013b/data")
    make_aircraft(tmp_path, "fgvc_aircraft")
    (n1, tr1, te1), u1 = load_dataset("aircraft", tmp_path, "torchvision", 42)
    (n2, tr2, te2), u2 = load_dataset("aircraft", tmp_path, "coop", 42)
    assert (u1, u2) == ("torchvision", "coop")
    assert n1 == n2 == AIRCRAFT
    assert [(Path(p).name, y) for p, y in tr1] == [(Path(p).name, y) for p, y in tr2]
    assert [y for _, y in te1] == [0, 0, 1, 1, 2, 2] and Path(te1[2][0]).name == "0000110.jpg"


# --- CoOp convention -----------------------------------------------------------------------------
def test_dtd_coop_split_json(tmp_path: Path) -> None:
    make_dtd_coop(tmp_path)
    (names, train, test), used = load_dataset("dtd", tmp_path, "coop", 42)
    assert used == "coop" and names == DTD_CLASSES
    assert len(train) == 12 and len(test) == 6  # "val" is not used
    assert all(Path(p).is_file() and Path(p).parent.name == names[y] for p, y in train + test)


def test_coop_requested_for_mnist_falls_back_and_is_recorded(tmp_path: Path) -> None:
    make_mnist_torchvision(tmp_path)
    make_dtd_coop(tmp_path)
    cfg = MTILConfig(root=str(tmp_path), datasets=["dtd", "mnist"], split_convention="coop")
    tasks = build_mtil(cfg, seed=0)
    assert [t.name for t in tasks] == ["dtd", "mnist"]
    assert tasks[0].info["split_convention"] == "coop"
    assert tasks[1].info["split_convention"] == "torchvision"
    assert tasks[1].info["requested_convention"] == "coop"


# --- streams --------------------------------------------------------------------------------------
def _all_fixtures(root: Path) -> None:
    make_dtd_torchvision(root)
    make_eurosat_torchvision(root, n=10)
    make_caltech_torchvision(root)
    make_aircraft(root, "fgvc-aircraft-2013b/data")


def test_mtil_orders_and_few_shot(tmp_path: Path) -> None:
    _all_fixtures(tmp_path)
    make_mnist_torchvision(tmp_path)
    keep = ["dtd", "mnist", "aircraft", "caltech101"]
    one = build_mtil(MTILConfig(root=str(tmp_path), order="I", datasets=keep), seed=0)
    two = build_mtil(MTILConfig(root=str(tmp_path), order="2", datasets=keep), seed=0)
    assert [t.name for t in one] == ["aircraft", "caltech101", "dtd", "mnist"]
    assert [t.name for t in two] == ["mnist", "aircraft", "caltech101", "dtd"]
    shot = build_mtil(MTILConfig(root=str(tmp_path), datasets=["eurosat"], shots=2), seed=3)[0]
    counts = np.bincount([e.label for e in shot.train], minlength=3)
    assert counts.tolist() == [2, 2, 2]
    again = build_mtil(MTILConfig(root=str(tmp_path), datasets=["eurosat"], shots=2), seed=3)[0]
    other = build_mtil(MTILConfig(root=str(tmp_path), datasets=["eurosat"], shots=2), seed=4)[0]
    assert [e.input for e in again.train] == [e.input for e in shot.train]
    assert [e.input for e in other.train] != [e.input for e in shot.train]
    assert shot.info["shots"] == 2 and shot.eval_class_names is None
    assert shot.templates[0] == "a centered satellite photo of {}."


def test_few_shot_keeps_small_classes_whole() -> None:
    samples = [("a", 0)] * 5 + [("b", 1)]
    out = few_shot(samples, 3, seed=0)
    assert [y for _, y in out].count(0) == 3 and [y for _, y in out].count(1) == 1


def test_xtail_union_label_space(tmp_path: Path) -> None:
    _all_fixtures(tmp_path)
    tasks = build_xtail(XTAILConfig(root=str(tmp_path), datasets=["aircraft", "caltech101", "dtd"]), seed=0)
    assert [t.label_offset for t in tasks] == [0, 3, 6]
    union = AIRCRAFT + ["off-center face", "accordion", "side of a car"] + DTD_CLASSES
    assert all(t.eval_class_names == union for t in tasks)
    seg = tasks[0].info["eval_segments"]
    assert [(s["task"], s["offset"], s["count"]) for s in seg] == [
        ("aircraft", 0, 3),
        ("caltech101", 3, 3),
        ("dtd", 6, 3),
    ]
    assert seg[2]["templates"][0] == "a photo of a {} texture."
    assert tasks[0].info["shots"] == 16
    with pytest.raises(ConfigError, match="scenario.datasets"):
        XTAILConfig(root=str(tmp_path), datasets=["cifar100"])


def test_bad_config_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scenario.root"):
        MTILConfig(root="")
    with pytest.raises(ConfigError, match="scenario.root"):
        MTILConfig(root=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="scenario.order"):
        MTILConfig(root=str(tmp_path), order="III")
    with pytest.raises(ConfigError, match="scenario.split_convention"):
        MTILConfig(root=str(tmp_path), split_convention="zhou")
    with pytest.raises(ConfigError, match="scenario.shots"):
        MTILConfig(root=str(tmp_path), shots=0)
    with pytest.raises(
        DataError, match=r"DTD \(torchvision layout\) is missing .*dtd/dtd/images.*download=True"
    ):
        build_mtil(MTILConfig(root=str(tmp_path), datasets=["dtd"]), seed=0)
    bad = tmp_path / "dtd"
    bad.mkdir()
    (bad / "images").mkdir()
    (bad / "split_zhou_DescribableTextures.json").write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="no 'test' list"):
        build_mtil(MTILConfig(root=str(tmp_path), datasets=["dtd"], split_convention="coop"), seed=0)


def test_data_check_report(tmp_path: Path) -> None:
    make_dtd_torchvision(tmp_path)
    make_dtd_coop(tmp_path)
    make_eurosat_torchvision(tmp_path)
    (tmp_path / "flowers-102").mkdir()
    img(tmp_path / "flowers-102" / "jpg" / "image_00001.jpg")
    report = data_check.check("xtail", tmp_path)
    lines = {line.split()[1]: line for line in report.splitlines() if line.startswith("  [")}
    assert len(lines) == 10 and "cifar100" not in lines
    assert lines["dtd"].startswith("  [ok]") and "torchvision present; coop present" in lines["dtd"]
    # the CoOp layout shares eurosat/2750 and lacks only its split file
    assert "torchvision present; coop incomplete" in lines["eurosat"]
    assert "coop layout lacks: eurosat/split_zhou_EuroSAT.json" in report
    assert "torchvision missing; coop missing" in lines["food"]
    assert lines["flowers"].startswith("  [--]") and "torchvision incomplete" in lines["flowers"]
    assert "flowers-102/imagelabels.mat" in report and "torchvision.datasets.Flowers102(" in report
    assert "2 of 10 datasets usable." in report
    assert "mnist" in data_check.check("mtil", tmp_path) and "cifar100" in data_check.check("mtil", tmp_path)
    with pytest.raises(ConfigError, match="--scenario"):
        data_check.check("imagenet", tmp_path)
    with pytest.raises(ConfigError, match="--root"):
        data_check.check("mtil", tmp_path / "missing")
