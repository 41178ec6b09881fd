"""`rankwise report` on real (tiny) runs: the files exist, are PNGs, and report.md has the right numbers."""

import json

import numpy as np
import pytest
import torch
from engine.toy_helpers import toy_dict

from rankwise.config import config_from_dict
from rankwise.engine.continual import run_experiment
from rankwise.errors import RankwiseError
from rankwise.report import _plt, atom_activation, read_run, write_report
from rankwise.report_compare import compare_section, group_runs, mean_interval, t_quantile_975

PNG = b"\x89PNG\r\n\x1a\n"


def _config(method: str) -> dict:
    """The engine tests' toy experiment (`toy_helpers.toy_dict`), made smaller: 2 tasks, 8 steps."""
    data = toy_dict(method, iterations=8, lr=1e-2, log_every=2, checkpoint_every=4)
    data.update(name=f"rep_{method}", seed=1)
    # rank 4 for the methods whose report plots ranks / atoms; LoRA runs keep its default rank
    data["method"] = {**data["method"], "r": 4} if method in ("codyra", "moram") else {"name": method}
    if method == "codyra":
        data["method"]["ramp_steps"] = 4
    data["backbone"].update(dim=16, embed_dim=16)
    data["scenario"].update(num_tasks=2, train_per_class=8, test_per_class=4)
    return data


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
            "overlay_loss.png",
            "overlay_accuracy.png",
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


# -- several runs: overlays and seeds averaged (rankwise.report_compare) ------------------------------
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The same LoRA experiment with seeds 1 and 2 (names differ too)."""
    base = tmp_path_factory.mktemp("seeds")
    out = []
    for seed in (1, 2):
        data = _config("lora")
        data.update(name=f"rep_lora_seed{seed}", seed=seed)
        out.append(run_experiment(config_from_dict(data), base / f"s{seed}", quiet=True))
    return out


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 61), 100, 1000, 10**6]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4), df
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_interval_by_hand():
    mean, half = mean_interval([10.0, 14.0])
    # s = |14 - 10| / sqrt(2); half = t(1) s / sqrt(2) = 12.7062 * 2
    assert mean == 12.0 and half == pytest.approx(12.7062 * 2.0)
    mean, half = mean_interval([[1.0, 2.0, 3.0]])
    assert mean[0] == 2.0 and half[0] == pytest.approx(4.3027 * 1.0 / 3**0.5)
    assert np.isnan(mean_interval([5.0])[1])


def test_seed_runs_grouped_and_averaged_in_report(tmp_path, seeds, runs):
    dirs = [s.run_dir for s in seeds] + [runs["codyra"].run_dir]
    records = [read_run(d) for d in dirs]
    groups = group_runs(records)
    assert [[r.name for r in g] for g in groups] == [["rep_lora_seed1", "rep_lora_seed2"], ["rep_codyra"]]
    out = tmp_path / "report"
    written = {p.name for p in write_report(dirs, out)}
    assert {"overlay_loss.png", "overlay_accuracy.png"} <= written
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| rep_lora (n=2) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["2/2", "1, 2"]
    for cell, key in zip(cells[3:7], ("transfer", "average", "last", "bwt")):
        a, b = (s.metrics[key] for s in seeds)
        assert cell == f"{(a + b) / 2:.2f} ± {12.7062 * abs(a - b) / 2:.2f}", key
    codyra = next(line for line in md.splitlines() if line.startswith("| rep_codyra |") and "± " not in line)
    assert f"{runs['codyra'].metrics['last']:.2f}" in codyra
    assert "Paired differences" not in md  # no run wrote per-item scores


def test_overlay_curves_are_seed_means_with_bands(tmp_path, seeds, runs):
    figures = {}

    def keep(fig, path):  # what was drawn, read before the figure is closed
        ax = fig.axes[0]
        figures[path.name] = (
            {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.lines},
            len(ax.collections),
        )
        _plt().close(fig)
        return path

    records = [read_run(s.run_dir) for s in seeds] + [read_run(runs["codyra"].run_dir)]
    written, lines = compare_section(records, tmp_path, _plt(), keep)
    assert [p.name for p in written] == ["overlay_loss.png", "overlay_accuracy.png"]
    acc_lines, bands = figures["overlay_accuracy.png"]
    assert bands == 1  # a band for the 2-seed group only
    x, y = acc_lines["rep_lora (n=2)"]
    np.testing.assert_array_equal(x, [0, 1, 2])
    by_hand = (seeds[0].accuracy_matrix.mean(axis=1) + seeds[1].accuracy_matrix.mean(axis=1)) / 2
    np.testing.assert_allclose(y, by_hand)
    np.testing.assert_allclose(acc_lines["rep_codyra"][1], runs["codyra"].accuracy_matrix.mean(axis=1))
    loss_lines, _ = figures["overlay_loss.png"]
    x, y = loss_lines["rep_lora (n=2)"]
    losses = [
        {(e["task"] - 1) * 8 + e["iteration"]: e["loss"] for e in map(json.loads, open(s.run_dir / "events.jsonl")) if e["event"] == "step"}
        for s in seeds
    ]
    np.testing.assert_array_equal(x, sorted(losses[0]))
    np.testing.assert_allclose(y, [(losses[0][k] + losses[1][k]) / 2 for k in sorted(losses[0])])
    assert any("![overlay_loss](overlay_loss.png)" == line for line in lines)


def test_report_adds_paired_differences_for_runs_with_item_scores(tmp_path):
    """Two experiments x two seeds with per-item scores: report.md has their paired row, and its
    differences are the seed means of the metric differences (a single common seed is enough)."""
    torch.set_num_threads(1)
    results = {}
    for method in ("lora", "moram"):
        for seed in (1, 2):
            data = _config(method)
            data.update(name=f"pair_{method}_seed{seed}", seed=seed)
            data["eval"] = {**data.get("eval", {}), "item_scores": True}
            results[method, seed] = run_experiment(config_from_dict(data), tmp_path / f"{method}{seed}", quiet=True)
    out = tmp_path / "report"
    write_report([r.run_dir for r in results.values()], out)
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| pair_lora (n=2) − pair_moram (n=2) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2"
    for cell, key in zip(cells[2:6], ("transfer", "average", "last", "bwt")):
        by_hand = np.mean([results["lora", s].metrics[key] - results["moram", s].metrics[key] for s in (1, 2)])
        assert cell.startswith(f"{by_hand:+.2f} ["), (key, cell)
    plain = tmp_path / "plain"
    write_report([results["lora", 1].run_dir, results["moram", 1].run_dir], plain)
    assert "| pair_lora_seed1 − pair_moram_seed1 | 1 |" in (plain / "report.md").read_text()
