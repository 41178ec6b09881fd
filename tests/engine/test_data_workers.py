"""Batches made in background processes (``train.data_workers`` / ``eval.data_workers``): the same
run as in-process batches, reproducible random draws, exact resume, errors carried back."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from toy_helpers import REPO, toy_config, toy_dict

from rankwise.backbones.toy import ToyBackbone
from rankwise.config import config_from_dict
from rankwise.engine import checkpoint as ckpt
from rankwise.engine.continual import run_experiment
from rankwise.engine.loader import batches, to_device
from rankwise.errors import ConfigError, DataError

SHARED_IMAGES = REPO.parent / "shared" / "data" / "images"


def _steps(run_dir: Path) -> list[tuple[int, int, float]]:
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return [(e["task"], e["iteration"], e["loss"]) for e in events if e["event"] == "step"]


def _config(workers: int, eval_workers: int = 0, method: str = "codyra"):
    data = toy_dict(method, data_workers=workers)
    data["eval"] = {"data_workers": eval_workers}
    return config_from_dict(data)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    torch.set_num_threads(1)
    return run_experiment(toy_config(), tmp_path_factory.mktemp("ref") / "run", quiet=True)


def test_background_batches_give_the_in_process_run(tmp_path, in_process):
    """The toy collate draws nothing at random: 2 workers for training and evaluation give the same
    losses at every step and the same accuracy matrix as the in-process run, to the bit."""
    result = run_experiment(_config(2, 2), tmp_path / "run", quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, in_process.accuracy_matrix)
    assert _steps(result.run_dir) == _steps(in_process.run_dir)
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]["data_workers"] == 2


class _Crash(BaseException):
    pass


def _crashed_run(monkeypatch, config, run_dir: Path, n: int) -> None:
    """`config` run in `run_dir`, stopped by a kill-like exception at the `n`-th state commit."""
    original, calls = ckpt.write_state, [0]

    def crash(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise _Crash
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "write_state", crash)
        with pytest.raises(_Crash):
            run_experiment(config, run_dir, quiet=True)


def test_crash_and_resume_with_workers_is_exact(tmp_path, monkeypatch, in_process):
    """Killed between a snapshot and its commit (task 1, resumes at iteration 10), resumed with
    workers: the remaining batches start at the right micro-step."""
    _crashed_run(monkeypatch, _config(2), tmp_path / "run", 4)
    result = run_experiment(_config(1), tmp_path / "run", resume=True, quiet=True)  # 2 -> 1 worker: allowed
    np.testing.assert_array_equal(result.accuracy_matrix, in_process.accuracy_matrix)
    assert _steps(result.run_dir) == _steps(in_process.run_dir)


def _noisy_collate(monkeypatch) -> None:
    """A training collate that draws random numbers (as an augmentation does): token ids replaced at random."""
    original = ToyBackbone.collate

    def collate(self, examples, task, train):
        batch = original(self, examples, task, train)
        if train:
            mask = torch.rand(batch["tokens"].shape) < 0.3
            noise = torch.randint(1, self.config.vocab_size, batch["tokens"].shape)
            batch["tokens"] = torch.where(mask & (batch["tokens"] > 0), noise, batch["tokens"])
        return batch

    monkeypatch.setattr(ToyBackbone, "collate", collate)


def test_random_draws_in_workers_do_not_depend_on_the_worker_count_and_resume_exactly(tmp_path, monkeypatch):
    _noisy_collate(monkeypatch)
    one = run_experiment(_config(1), tmp_path / "one", quiet=True)
    two = run_experiment(_config(2), tmp_path / "two", quiet=True)
    np.testing.assert_array_equal(one.accuracy_matrix, two.accuracy_matrix)
    assert _steps(one.run_dir) == _steps(two.run_dir)
    # the draws are seeded per batch: another seed draws other noise (the check above can fail)
    other = toy_dict("codyra", data_workers=1)
    other["seed"] = 4
    assert _steps(run_experiment(config_from_dict(other), tmp_path / "other", quiet=True).run_dir) != _steps(
        one.run_dir
    )
    # and in-process batches draw from the main generators instead: a different (valid) run
    assert _steps(run_experiment(_config(0), tmp_path / "zero", quiet=True).run_dir) != _steps(one.run_dir)

    _crashed_run(monkeypatch, _config(2), tmp_path / "resumed", 6)  # task 2's iteration-5 snapshot
    resumed = run_experiment(_config(2), tmp_path / "resumed", resume=True, quiet=True)
    np.testing.assert_array_equal(resumed.accuracy_matrix, one.accuracy_matrix)
    assert _steps(resumed.run_dir) == _steps(one.run_dir)


def test_a_data_error_in_a_worker_stops_the_run_with_its_message(tmp_path, monkeypatch):
    original = ToyBackbone.collate

    def collate(self, examples, task, train):
        if train and task.name.endswith("2"):
            raise DataError(f"example of {task.name!r} cannot be read (pid {os.getpid()})")
        return original(self, examples, task, train)

    monkeypatch.setattr(ToyBackbone, "collate", collate)
    with pytest.raises(DataError, match=r"cannot be read \(pid (\d+)\)") as caught:
        run_experiment(_config(2), tmp_path / "run", quiet=True)
    assert int(caught.value.args[0].rsplit("pid ", 1)[1].rstrip(")")) != os.getpid()  # made in a worker
    # the run stopped at its last commit and resumes once the data are fixed
    monkeypatch.setattr(ToyBackbone, "collate", original)
    result = run_experiment(_config(1), tmp_path / "run", resume=True, quiet=True)
    assert result.accuracy_matrix.shape == (4, 3)


@pytest.mark.parametrize("section", ["train", "eval"])
@pytest.mark.parametrize("value", [-1, 65, True, 1.5, "two"])
def test_bad_worker_counts_name_the_field(section, value):
    data = toy_dict()
    data.setdefault(section, {})["data_workers"] = value
    with pytest.raises(ConfigError, match=rf"{section}\.data_workers=.* expected an integer"):
        config_from_dict(data)


def test_a_run_made_before_the_option_existed_resumes(tmp_path, in_process):
    """config.yaml of an older version has no data_workers keys: compared at their default (0)."""
    run_dir = tmp_path / "old"
    import shutil

    shutil.copytree(in_process.run_dir, run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["train"]["data_workers"], saved["eval"]["data_workers"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    result = run_experiment(toy_config(), run_dir, resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, in_process.accuracy_matrix)
    # eval workers never change a result; training batches in process vs in workers can (random draws)
    run_experiment(_config(0, eval_workers=2), run_dir, resume=True, quiet=True)
    with pytest.raises(ConfigError, match=r"(?s)differences:.*data_workers: 0.*data_workers: in background"):
        run_experiment(_config(2), run_dir, resume=True, quiet=True)


def test_batches_in_order_on_the_device_and_early_stop():
    made = list(batches(lambda i: {"x": torch.full((2,), i)}, 3, 9, workers=2, backbone=object(), device="cpu"))
    assert [int(b["x"][0]) for b in made] == [3, 4, 5, 6, 7, 8]
    assert list(batches(lambda i: i, 5, 5, workers=2, backbone=object(), device="cpu")) == []
    stream = batches(lambda i: torch.tensor(i), 0, 100, workers=2, backbone=object(), device="cpu")
    assert int(next(stream)) == 0
    stream.close()  # workers shut down without consuming the rest


def test_to_device_walks_dicts_lists_tuples_namedtuples_and_dataclasses():
    @dataclasses.dataclass
    class Batch:
        pixels: torch.Tensor
        labels: list[int]

    Pair = collections.namedtuple("Pair", "a b")
    moved = to_device({"b": Batch(torch.ones(1), [1]), "t": (torch.zeros(1), "s"), "p": Pair(torch.ones(1), 2)}, "meta")
    assert moved["b"].pixels.device.type == "meta" and moved["b"].labels == [1]
    assert moved["t"][0].device.type == "meta" and moved["t"][1] == "s"
    assert isinstance(moved["p"], Pair) and moved["p"].a.device.type == "meta" and moved["p"].b == 2


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="needs ../shared/data/images")
def test_clip_images_decoded_in_workers(tmp_path):
    """Real JPEG / PNG decoding in workers for a small CLIP: evaluation scores equal the in-process
    ones; training with the random crop is the same for 1 and 2 workers."""
    data = yaml.safe_load((REPO / "configs" / "images_tiny_clip_codyra.yaml").read_text())
    data["scenario"].update(root=str(SHARED_IMAGES), tasks=["gtsrb", "cifar10"], max_train_per_task=48,
                            max_test_per_task=60)  # fmt: skip
    data["backbone"]["train_augment"] = True
    data["train"].update(iterations=4, checkpoint_every=10)
    data["method"].update(ramp_steps=2)
    data["eval"] = {"batch_size": 25}
    results = {}
    for train_workers, eval_workers in ((1, 0), (2, 2)):
        data["train"]["data_workers"], data["eval"]["data_workers"] = train_workers, eval_workers
        results[train_workers] = run_experiment(config_from_dict(data), tmp_path / f"w{train_workers}", quiet=True)
    np.testing.assert_array_equal(results[1].accuracy_matrix, results[2].accuracy_matrix)
    assert _steps(results[1].run_dir) == _steps(results[2].run_dir)
