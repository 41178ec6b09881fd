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
    tv = {"split_convention": "torchvision"}
    one = build_mtil(MTILConfig(root=str(tmp_path), order="I", datasets=keep, **tv), seed=0)
    two = build_mtil(MTILConfig(root=str(tmp_path), order="2", datasets=keep, **tv), seed=0)
    assert [t.name for t in one] == ["aircraft", "caltech101", "dtd", "mnist"]
    assert [t.name for t in two] == ["mnist", "aircraft", "caltech101", "dtd"]
    shot = build_mtil(MTILConfig(root=str(tmp_path), datasets=["eurosat"], shots=2, **tv), seed=3)[0]
    counts = np.bincount([e.label for e in shot.train], minlength=3)
    assert counts.tolist() == [2, 2, 2]
    again = build_mtil(MTILConfig(root=str(tmp_path), datasets=["eurosat"], shots=2, **tv), seed=3)[0]
    other = build_mtil(MTILConfig(root=str(tmp_path), datasets=["eurosat"], shots=2, **tv), seed=4)[0]
    assert [e.input for e in again.train] == [e.input for e in shot.train]
    assert [e.input for e in other.train] != [e.input for e in shot.train]
    assert shot.info["shots"] == 2 and shot.eval_class_names is None
    assert shot.templates == ["a centered satellite photo of the {}."]  # the official template
    assert shot.info["prompts"] == "official" and shot.info["shot_sampling"] == "official"


def test_few_shot_keeps_small_classes_whole() -> None:
    samples = [("a", 0)] * 5 + [("b", 1)]
    out = few_shot(samples, 3, seed=0)
    assert [y for _, y in out].count(0) == 3 and [y for _, y in out].count(1) == 1


def test_xtail_union_label_space(tmp_path: Path) -> None:
    _all_fixtures(tmp_path)
    cfg = XTAILConfig(
        root=str(tmp_path),
        datasets=["aircraft", "caltech101", "dtd"],
        split_convention="torchvision",
        prompts="zscl",
    )
    tasks = build_xtail(cfg, seed=0)
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
    with pytest.raises(ConfigError, match="scenario.prompts"):
        MTILConfig(root=str(tmp_path), prompts="clip")
    with pytest.raises(ConfigError, match="scenario.shot_sampling"):
        MTILConfig(root=str(tmp_path), shot_sampling="sorted")
    with pytest.raises(
        DataError, match=r"DTD \(torchvision layout\) is missing .*dtd/dtd/images.*download=True"
    ):
        build_mtil(MTILConfig(root=str(tmp_path), datasets=["dtd"], split_convention="torchvision"), seed=0)
    with pytest.raises(
        DataError, match=r"Caltech101 \(coop layout\) is missing .*caltech-101.*\(or caltech101/"
    ):
        build_mtil(MTILConfig(root=str(tmp_path), datasets=["caltech101"]), seed=0)
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


# --- the official X-TAIL protocol (CoDyRA / MoRAM main.py + scenario_datasets) -------------------
# Class names as CoOp's split files hold them (EuroSAT: eurosat.py NEW_CNAMES; Cars: year first).
EUROSAT_COOP = ["Annual Crop Land", "Forest", "Sea or Lake"]
CARS_COOP = ["2000 AM General Hummer SUV", "2012 Tesla Model S Sedan"]


def write_coop(
    root: Path, split_file: str, image_dir: str, names: list[str], train_counts: list[int], prefix: str = ""
) -> None:
    """A CoOp split file; image paths `<prefix><train|test>/c<k>/<part>_<i>.jpg` (Cars: prefix "cars_")."""
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for part, counts in (("train", train_counts), ("val", [1] * len(names)), ("test", [2] * len(names))):
        for k, (name, n) in enumerate(zip(names, counts)):
            for i in range(n):
                rel = f"{prefix}{'test' if part == 'test' else 'train'}/c{k}/{part}_{i}.jpg"
                img(root / image_dir / rel, k)
                split[part].append([rel, k, name])
    (root / split_file).parent.mkdir(parents=True, exist_ok=True)
    (root / split_file).write_text(json.dumps(split))


def make_official_fixtures(root: Path) -> None:
    """dtd, eurosat (one class smaller than 2 shots), cars in CoOp layout; MNIST with 3 per class."""
    make_dtd_coop(root)
    write_coop(root, "eurosat/split_zhou_EuroSAT.json", "eurosat/2750", EUROSAT_COOP, [5, 1, 3])
    write_coop(
        root, "stanford_cars/split_zhou_StanfordCars.json", "stanford_cars", CARS_COOP, [3, 4], "cars_"
    )
    images = np.random.default_rng(1).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = np.arange(40) % 10
    for split, sl in (("train", slice(0, 30)), ("t10k", slice(30, 40))):
        write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", images[sl])
        write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels[sl])


OFFICIAL_SEQUENCE = ["dtd", "eurosat", "mnist", "cars"]  # X-TAIL order, subset


def test_split_zhou_and_official_prompts_are_the_defaults(tmp_path: Path) -> None:
    make_official_fixtures(tmp_path)
    for cls in (MTILConfig, XTAILConfig):
        cfg = cls(root=str(tmp_path))
        assert (cfg.split_convention, cfg.prompts, cfg.shot_sampling) == ("coop", "official", "official")
    tasks = build_xtail(XTAILConfig(root=str(tmp_path), datasets=OFFICIAL_SEQUENCE), seed=8)
    names = {t.name: t.class_names for t in tasks}
    # quirks of the official code, written out from its files (dtd.py, eurosat.py, collections.py)
    assert names["dtd"] == DTD_CLASSES
    assert names["eurosat"] == [
        "Annual Crop Land satellite location",
        "Forest satellite location",
        "Sea or Lake satellite location",
    ]
    assert names["mnist"][:2] == ['number: "0 - zero"', 'number: "1 - one"'] and len(names["mnist"]) == 10
    assert names["cars"] == CARS_COOP
    first = {t.name: t.templates[0] for t in tasks}
    assert first == {
        "dtd": "{} texture.",
        "eurosat": "a centered satellite photo of the {}.",
        "mnist": 'a photo of the number: "{}".',
        "cars": "a photo of a {}.",
    }
    info = tasks[0].info
    assert info["split_convention"] == "coop" and tasks[2].info["split_convention"] == "torchvision"
    assert (info["prompts"], info["shot_sampling"], info["shots"], info["shot_seed"]) == (
        "official",
        "official",
        16,
        8,
    )


def test_evaluation_prompts_are_template0_of_each_dataset(tmp_path: Path) -> None:
    from torch import nn

    from rankwise.backbones.clip import ClipBackbone

    class Recorder(ClipBackbone):
        def __init__(self) -> None:
            super().__init__(nn.Linear(2, 2), lambda x: x, lambda x: x, device="cpu", eval_templates="first")
            self.prompts: list[str] = []

        def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
            self.prompts += prompts
            return torch.randn(len(prompts), 4)

    make_official_fixtures(tmp_path)
    tasks = build_xtail(XTAILConfig(root=str(tmp_path), datasets=OFFICIAL_SEQUENCE, shots=1), seed=0)
    backbone = Recorder()
    assert backbone.eval_text_features(tasks[-1]).shape == (3 + 3 + 10 + 2, 4)
    expected = (
        [f"{c} texture." for c in DTD_CLASSES]
        + [f"a centered satellite photo of the {c} satellite location." for c in EUROSAT_COOP]
        + [f'a photo of the number: "number: "{d}"".' for d in ("0 - zero", "1 - one")]
    )
    assert backbone.prompts[:8] == expected
    assert backbone.prompts[-2:] == [f"a photo of a {c}." for c in CARS_COOP]


def _official_reference(trains: dict[str, list], order: list[str], shots: int, seed: int) -> dict[str, list]:
    """The official main.py's draws, written against its code: global random / numpy seeded once;
    DatasetBase.generate_fewshot_dataset per CoOp build (train build + 2 builds per dataset in each
    evaluation); collections.FewShotDataset (numpy choice == permutation[:n]) for MNIST."""
    import random
    from collections import defaultdict

    random.seed(seed)
    np.random.seed(seed)

    def coop_build(items: list) -> list:
        tracker = defaultdict(list)
        for item in items:
            tracker[item[1]].append(item)
        out = []
        for group in tracker.values():
            out.extend(random.sample(group, shots) if len(group) >= shots else random.choices(group, k=shots))
        return out

    picked = {}
    for key in order:
        if key == "mnist":
            targets = np.array([y for _, y in trains[key]])
            idx = []
            for cls in sorted(set(targets.tolist())):
                where = np.flatnonzero(targets == cls)
                idx += where[np.random.permutation(len(where))[:shots]].tolist()
            picked[key] = [trains[key][i] for i in idx]
        else:
            picked[key] = coop_build(trains[key])
        for _ in range(2):
            for other in order:
                if other != "mnist":
                    coop_build(trains[other])
    return picked


def _key(samples) -> list:
    return [(x if isinstance(x, str) else x.tobytes(), y) for x, y in samples]


@pytest.mark.parametrize("seed", [8, 42])
def test_official_few_shot_replays_the_official_draws(tmp_path: Path, seed: int) -> None:
    make_official_fixtures(tmp_path)
    cfg = XTAILConfig(root=str(tmp_path), datasets=OFFICIAL_SEQUENCE, shots=2)
    tasks = build_xtail(cfg, seed=seed)
    full = {k: load_dataset(k, tmp_path, "coop", 42, "official")[0][1] for k in OFFICIAL_SEQUENCE}
    want = _official_reference(full, OFFICIAL_SEQUENCE, 2, seed)
    for task in tasks:
        got = [(e.input, e.label) for e in task.train]
        assert _key(got) == _key(want[task.name]), task.name
    eurosat = next(t for t in tasks if t.name == "eurosat")
    # the 1-image class is drawn with replacement to 2 shots, as random.choices does
    assert [e.label for e in eurosat.train].count(1) == 2 and len(
        {e.input for e in eurosat.train if e.label == 1}
    ) == 1
    # the stream is shared by the whole sequence: a shorter sequence is replayed as its own
    later = build_xtail(XTAILConfig(root=str(tmp_path), datasets=["eurosat", "cars"], shots=2), seed=seed)
    ref = _official_reference(full, ["eurosat", "cars"], 2, seed)
    assert _key([(e.input, e.label) for e in later[1].train]) == _key(ref["cars"])


def test_per_dataset_sampling_option_is_the_old_draw(tmp_path: Path) -> None:
    make_official_fixtures(tmp_path)
    cfg = XTAILConfig(
        root=str(tmp_path), datasets=["eurosat"], shots=2, shot_sampling="per_dataset", shot_seed=3
    )
    (task,) = build_xtail(cfg, seed=0)
    full = load_dataset("eurosat", tmp_path, "coop", 42, "official")[0][1]
    assert [(e.input, e.label) for e in task.train] == few_shot(full, 2, seed=3)
    assert [e.label for e in task.train].count(1) == 1  # small classes kept whole, no repeats


def test_official_names_under_the_torchvision_layout(tmp_path: Path) -> None:
    from rankwise.scenarios.mtil_names import official_names

    make_eurosat_torchvision(tmp_path)
    make_caltech_torchvision(tmp_path)
    (names, _, _), _ = load_dataset("eurosat", tmp_path, "torchvision", 42, "official")
    assert names == [n + " satellite location" for n in EUROSAT_COOP]  # same as from the split file
    # Caltech: CoOp drops Faces_easy, renames Faces -> face, keeps other folder names
    (names, train, test), _ = load_dataset("caltech101", tmp_path, "torchvision", 42, "official")
    assert names == ["face", "accordion", "car_side"] and len(train) + len(test) == 9
    assert official_names("caltech101", ["Faces", "Faces_easy", "airplanes"], False) == [
        "face",
        None,
        "airplane",
    ]
    assert official_names("cars", ["AM General Hummer SUV 2000"], False) == ["2000 AM General Hummer SUV"]
    assert official_names("pets", ["American Bulldog"], False) == ["american_bulldog"]
    assert official_names("sun397", ["apartment_building/outdoor"], False) == ["outdoor apartment_building"]
    assert official_names("cifar100", ["aquarium_fish"], False) == ["aquarium fish"]


def test_coop_files_under_the_official_code_folder_names(tmp_path: Path) -> None:
    write_coop(
        tmp_path,
        "caltech101/split_zhou_Caltech101.json",
        "caltech101/101_ObjectCategories",
        ["face", "accordion"],
        [2, 2],
    )
    (names, train, test), used = load_dataset("caltech101", tmp_path, "coop", 42, "official")
    assert used == "coop" and names == ["face", "accordion"] and (len(train), len(test)) == (4, 4)
    assert all(Path(p).is_file() for p, _ in train + test)
    lines = {
        line.split()[1]: line
        for line in data_check.check("xtail", tmp_path).splitlines()
        if line.startswith("  [")
    }
    assert lines["caltech101"].startswith("  [ok]") and "coop present" in lines["caltech101"]


PRESETS = {
    # file: (seed, method values, scenario name, order, shots)
    "xtail_codyra.yaml": (
        8,
        {"name": "codyra", "r": 16, "k_max": 0.005, "dense_fraction": 0.5},
        "xtail",
        None,
        16,
    ),
    "xtail_moram.yaml": (
        42,
        {"name": "moram", "r": 16, "tau": 0.01, "delta": 0.2, "top_k": 16},
        "xtail",
        None,
        16,
    ),
    "mtil_order1_codyra.yaml": (8, {"name": "codyra", "r": 16, "k_max": 0.005}, "mtil", "I", None),
    "mtil_order2_codyra.yaml": (8, {"name": "codyra", "r": 16, "k_max": 0.005}, "mtil", "II", None),
    "mtil_order1_moram.yaml": (42, {"name": "moram", "r": 16, "tau": 0.01, "delta": 0.2}, "mtil", "I", None),
    "mtil_order2_moram.yaml": (42, {"name": "moram", "r": 16, "tau": 0.01, "delta": 0.2}, "mtil", "II", None),
    "mtil_5shot_order1_codyra.yaml": (8, {"name": "codyra", "r": 16, "k_max": 0.005}, "mtil", "I", 5),
    "mtil_5shot_order1_moram.yaml": (
        42,
        {"name": "moram", "r": 16, "tau": 0.01, "delta": 0.2},
        "mtil",
        "I",
        5,
    ),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_paper_presets_hold_the_official_values(tmp_path: Path, preset: str) -> None:
    from rankwise.config import load_config

    seed, method, scenario, order, shots = PRESETS[preset]
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / preset, [f"scenario.root={tmp_path}"])
    data = cfg.to_dict()
    assert data["seed"] == seed  # CoDyRA main.py --seed 8; MoRAM main.py --seed 42
    assert {k: data["method"][k] for k in method} == method
    train = data["train"]
    assert (train["lr"], train["iterations"], train["batch_size"]) == (5e-4, 500, 64)  # runner_*.sh, main.py
    assert (train["optimizer"], train["betas"], train["weight_decay"]) == ("adamw", [0.9, 0.9999], 0.0)
    assert (train["schedule"], train["warmup_iterations"], train["bf16"]) == ("cosine", 0, False)  # fp32
    backbone = data["backbone"]
    assert (backbone["train_augment"], backbone["eval_templates"]) == (True, "first")
    sc = data["scenario"]
    assert cfg.scenario.name == scenario and sc["shots"] == shots
    assert (sc["split_convention"], sc["prompts"], sc["shot_sampling"], sc["shot_seed"]) == (
        "coop",
        "official",
        "official",
        None,  # = the run seed, as the official code seeds its draws with --seed
    )
    if order is not None:
        assert sc["order"] == order


def test_torchvision_train_test_loaders_read_files_labels_and_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Aircraft, DTD, Food and Flowers share one torchvision loader: it builds the train and test splits
    of the named class, pairs each image file with its label, and takes the class names from the set
    (Flowers102, which has none, from the official list)."""
    from rankwise.scenarios import mtil_datasets as md

    built = []

    class FakeSet:
        def __init__(self, root, split, download):
            assert download is False
            built.append((self.name, split))
            self.classes = [f"{self.name}-a", f"{self.name}-b"]
            self._image_files = [Path(f"{root}/{split}/{i}.jpg") for i in range(3)]
            self._labels = [i % 2 for i in range(3)]

    monkeypatch.setattr(md, "_tv", lambda name: type(name, (FakeSet,), {"name": name}))
    for key, name in (("aircraft", "FGVCAircraft"), ("dtd", "DTD"), ("food", "Food101"), ("flowers", "Flowers102")):
        built.clear()
        names, train, test = md.TORCHVISION_LOADERS[key](Path("/r"), 0)
        assert built == [(name, "train"), (name, "test")]
        assert names == (list(md.FLOWERS_NAMES) if key == "flowers" else [f"{name}-a", f"{name}-b"])
        assert train == [("/r/train/0.jpg", 0), ("/r/train/1.jpg", 1), ("/r/train/2.jpg", 0)]
        assert test == [("/r/test/0.jpg", 0), ("/r/test/1.jpg", 1), ("/r/test/2.jpg", 0)]
