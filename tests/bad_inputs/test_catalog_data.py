"""Catalog: bad data. Files that are not images, truncated or empty; an external symlink in the data
root; a class folder with no training images; text records whose sentence is not a string.

CLI cases run the tiny random open_clip CLIP on a generated image folder (refusals come before any
training). Each case asserts the exit code, one line naming the file (and field), and that every file
around the case is byte-identical afterwards. A failing case says ``OUTCOME=<category>``.
"""

from __future__ import annotations

import io as _io
import json
import warnings
from pathlib import Path

import pytest
import yaml
from PIL import Image

from bad_inputs.catalog import REPO, CliResult, outcome, run_main, tree_digest
from rankwise.errors import DataError
from rankwise.scenarios.images import ImageFolderConfig
from rankwise.scenarios.images import build_scenario as build_images
from rankwise.scenarios.text import TextMTILConfig
from rankwise.scenarios.text import build_scenario as build_text

PRESET = REPO / "configs" / "images_tiny_clip_codyra.yaml"


def _png(colour: int = 0) -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", (32, 32), (colour, 40, 80)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(colour: int = 0) -> bytes:
    buf = _io.BytesIO()
    Image.effect_noise((48, 48), 60).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _tree(root: Path, per_class: int = 3) -> Path:
    """root/shapes/{train,test}/{circle,square}/<i>.png"""
    for split in ("train", "test"):
        for c, name in enumerate(("circle", "square")):
            folder = root / "shapes" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.png").write_bytes(_png(40 * c + i))
    return root


def _config(tmp_path: Path, root: Path, **scenario) -> Path:
    data = yaml.safe_load(PRESET.read_text())
    data["scenario"] = {"name": "image-folder", "root": str(root), "tasks": ["shapes"], **scenario}
    data["train"].update(iterations=2, batch_size=4, checkpoint_every=2, log_every=1)
    data["eval"]["batch_size"] = 8
    data["output"] = {"dir": str(tmp_path / "run")}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check(result: CliResult, before: dict, after: dict, *needles: str) -> str:
    got = outcome(result, before, after, 2, needles)
    assert got == "clean", f"OUTCOME={got}: rc={result.returncode} stderr={result.stderr[-1500:]!r}"
    return result.error_lines[0]


BAD_FILES = {
    "not-an-image": ("bad.png", b"this is a text file, not a picture\n"),
    "truncated-png": ("cut.png", _png(7)[:60]),
    "truncated-jpeg": ("cut.jpg", _jpeg()[: len(_jpeg()) // 2]),
    "empty": ("empty.jpg", b""),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_unreadable_image_is_named(tmp_path, kind):
    root = _tree(tmp_path / "data")
    name, payload = BAD_FILES[kind]
    bad = root / "shapes" / "train" / "square" / name
    bad.write_bytes(payload)
    cfg = _config(tmp_path, root)
    before = tree_digest(tmp_path)
    result = run_main("run", str(cfg), "--quiet", cwd=tmp_path)
    line = _check(result, before, tree_digest(tmp_path), str(bad), "data.skip_bad_files")
    assert not (tmp_path / "run").exists(), line


def test_skip_bad_files_skips_counts_and_reports(tmp_path):
    root = _tree(tmp_path / "data")
    for name, payload in BAD_FILES.values():
        (root / "shapes" / "train" / "circle" / name).write_bytes(payload)
    cfg = _config(tmp_path, root, skip_bad_files=True)
    before = tree_digest(tmp_path)
    with pytest.warns(UserWarning, match="skipped 4 unreadable image files"):
        result = run_main("run", str(cfg), "--quiet", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    after = tree_digest(tmp_path)
    assert all(after.get(k) == v for k, v in before.items()), "OUTCOME=data lost"
    recorded = [p for p in (tmp_path / "run").rglob("*.json") if '"skipped_bad_files": 4' in p.read_text()]
    assert recorded, "the count is kept with the task's info in the run directory"


def test_external_symlink_is_refused_unless_allowed(tmp_path):
    root = _tree(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png(99))
    link = root / "shapes" / "train" / "circle" / "link.png"
    link.symlink_to(outside / "secret.png")
    cfg = _config(tmp_path, root)
    before = tree_digest(tmp_path)
    result = run_main("run", str(cfg), "--quiet", cwd=tmp_path)
    _check(result, before, tree_digest(tmp_path), str(link), "data.follow_external_symlinks")
    allowed = build_images(ImageFolderConfig(root=str(root), follow_external_symlinks=True), seed=0)[0]
    assert str(link) in [e.input for e in allowed.train]


def test_internal_symlink_is_followed(tmp_path):
    root = _tree(tmp_path / "data")
    link = root / "shapes" / "train" / "circle" / "again.png"
    link.symlink_to(root / "shapes" / "test" / "circle" / "0.png")
    task = build_images(ImageFolderConfig(root=str(root)), seed=0)[0]
    assert str(link) in [e.input for e in task.train]


def test_class_without_training_images_warns(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "shapes" / "train" / "triangle").mkdir()
    (root / "shapes" / "train" / "triangle" / "notes.txt").write_text("no pictures yet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = build_images(ImageFolderConfig(root=str(root)), seed=0)[0]
    assert "triangle" in task.class_names
    messages = [str(w.message) for w in caught]
    assert any("triangle" in m and "cannot be learned" in m for m in messages), messages


# -- text records -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sentence", [None, [1, 2], {"a": 1}, 3], ids=["null", "list", "dict", "number"])
def test_text_record_whose_sentence_is_not_a_string(tmp_path, sentence):
    ag = tmp_path / "data" / "text" / "cl_benchmark" / "agnews"
    ag.mkdir(parents=True)
    labels = ["World", "Sports", "Business", "Science or Technology"]
    (ag / "labels.json").write_text(json.dumps(labels))
    records = [{"label": labels[i % 4], "sentence": f"text {i}"} for i in range(8)]
    records[5]["sentence"] = sentence
    (ag / "train.json").write_text(json.dumps(records))
    (ag / "test.json").write_text(json.dumps(records[:4]))
    before = tree_digest(tmp_path)
    with pytest.raises(DataError) as info:
        build_text(TextMTILConfig(root=str(tmp_path / "data"), tasks=["agnews"], test_size=None), seed=0)
    message = str(info.value)
    assert str(ag / "train.json") in message and "item 5" in message and "'sentence'" in message
    assert "\n" not in message and tree_digest(tmp_path) == before
