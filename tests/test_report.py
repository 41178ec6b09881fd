"""`rankwise report` on real (tiny) runs: the files exist, are PNGs, and report.md has the right numbers."""

import json

import numpy as np
import pytest
import torch

from rankwise.config import config_from_dict
from rankwise.engine.continual import run_experiment
from rankwise.errors import RankwiseError
from rankwise.report import atom_activation, read_run, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _config(method: str) -> dict:
    section = {"name": method, "r": 4} if method in ("codyra", "moram") else {"name": method}
    if method == "codyra":
        section.update(k_max=0.05, ramp_steps=4)
    return {
        "name": f"rep_{method}",
        "seed": 1,
        "device": "cpu",
        "method": section,
        "backbone": {"name": "toy", "dim": 16, "embed_dim": 16},
        "scenario": {"name": "synthetic", "num_tasks": 2, "train_per_class": 8, "test_per_class": 4},
        "train": {"iterations": 8, "batch_size": 16, "lr": 1e-2, "log_every": 2, "checkpoint_every": 4},
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("runs")
    return {
        m: run_experiment(config_from_dict(_config(m)), base / m, quiet=True) for m in ("codyra", "moram")
    }


def test_report_writes_plots_and_side_by_side_table(tmp_path, runs):
    out = tmp_path / "report"
    written = write_report([runs["codyra"].run_dir, runs["moram"].run_dir], out)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "rep_codyra_accuracy.png",
            "rep_codyra_loss.png",
            "rep_codyra_ranks.png",
            "rep_moram_accuracy.png",
            "rep_moram_loss.png",
            "rep_moram_atoms.png",
            "report.md",
        ]
    )
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    md = (out / "report.md").read_text()
    for method, result in runs.items():
        m = result.metrics
        row = next(line for line in md.splitlines() if line.startswith(f"| rep_{method} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == method
        assert cells[5:9] == [
            f"{m['transfer']:.2f}",
            f"{m['average']:.2f}",
            f"{m['last']:.2f}",
            f"{m['bwt']:.2f}",
        ]


def test_read_run_matches_disk(runs):
    rec = read_run(runs["codyra"].run_dir)
    np.testing.assert_array_equal(rec.matrix, runs["codyra"].accuracy_matrix)
    ends = [e for e in rec.events if e["event"] == "task_end"]
    assert len(ends) == 2
    surviving = [layer["merged_ranks"] for layer in ends[-1]["rank_report"]]
    assert all(len(s) == 2 and all(0 <= r <= 4 for r in s) for s in surviving)


def test_moram_activation_matrix_is_lower_triangular(runs):
    data = atom_activation(read_run(runs["moram"].run_dir))
    assert data.shape == (2, 2)
    assert np.isnan(data[0, 1])  # task 2's atoms do not exist after task 1
    assert np.all((data[np.isfinite(data)] >= 0) & (data[np.isfinite(data)] <= 1))
    events = [json.loads(x) for x in (runs["moram"].run_dir / "events.jsonl").read_text().splitlines()]
    rates = [layer["activation_rate_per_task"] for layer in events[-1]["rank_report"]]
    np.testing.assert_allclose(data[1], np.mean(np.array(rates), axis=0))


def test_report_of_a_non_run_directory_is_a_clear_error(tmp_path):
    with pytest.raises(RankwiseError, match="not a rankwise run directory"):
        write_report([tmp_path], tmp_path / "out")
