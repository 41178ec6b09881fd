"""`rankwise report`: PNG plots of runs and a markdown page comparing them side by side.

Per run (everything read from its run directory, nothing recomputed from a model):

* ``<run>_accuracy.png``  the (T+1) x T accuracy matrix as a heatmap with the numbers written in;
* ``<run>_loss.png``      training loss per logged step, tasks one after another;
* ``<run>_ranks.png``     CoDyRA: surviving ranks (non-zero gates merged) per adapted layer and task;
* ``<run>_atoms.png``     MoRAM: after each task, how often each task's atoms are activated at evaluation
  (mean over layers of the fraction of tokens giving them non-zero weight);
* ``report.md``           Transfer / Average / Last / BWT / Forgetting per run, then the plots.

Given several runs, it also overlays their curves and averages repeats of one experiment (seeds) with
95% intervals: ``overlay_loss.png``, ``overlay_accuracy.png`` and a table (see report_compare.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rankwise import io
from rankwise.errors import ConfigError, RankwiseError


@dataclass
class RunRecord:
    """What the report reads from one run directory."""

    path: Path
    name: str
    method: str
    config: dict[str, Any]
    tasks: list[str]
    matrix: np.ndarray
    metrics: dict[str, Any] | None
    events: list[dict[str, Any]]


def read_run(path: str | Path) -> RunRecord:
    path = Path(path)
    if not (path / "config.yaml").is_file() or not (path / "accuracy_matrix.json").is_file():
        raise RankwiseError(
            f"{path} is not a rankwise run directory (needs config.yaml and accuracy_matrix.json)"
        )
    from rankwise.engine.rundir import read_saved_config

    config = read_saved_config(path)
    for section in ("method", "backbone", "scenario"):
        if not isinstance(config.get(section), dict) or "name" not in config[section]:
            raise ConfigError(f"{section}.name", config.get(section), f"a section with a name (in {path / 'config.yaml'})")
    acc = io.read_json(path / "accuracy_matrix.json")
    if not isinstance(acc, dict) or not isinstance(acc.get("tasks"), list) or not isinstance(acc.get("matrix"), list):
        raise RankwiseError(f"{path / 'accuracy_matrix.json'} should hold 'tasks' and 'matrix' lists (corrupted?)")
    metrics = io.read_json(path / "metrics.json") if (path / "metrics.json").is_file() else None
    events = io.read_jsonl(path / "events.jsonl")
    t = len(acc["tasks"])
    matrix = np.full((t + 1, t), np.nan)
    for i, row in enumerate(acc["matrix"]):
        matrix[i] = row
    return RunRecord(
        path,
        config.get("name", path.name),
        config["method"]["name"],
        config,
        list(acc["tasks"]),
        matrix,
        metrics,
        events,
    )


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heatmap(
    ax, data: np.ndarray, rows: list[str], cols: list[str], fmt: str, vmax: float | None = None
) -> None:
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    top = np.nanmax(data) if np.isfinite(data).any() else 1.0
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                format(v, fmt),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if v > 0.6 * (vmax or top) else "white",
            )
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_accuracy(run: RunRecord, out: Path) -> Path:
    plt = _plt()
    rows = ["zero-shot"] + [f"after {n}" for n in run.tasks]
    fig, ax = plt.subplots(
        figsize=(1.0 + 0.9 * len(run.tasks), 1.2 + 0.5 * len(rows)), constrained_layout=True
    )
    _heatmap(ax, run.matrix, rows, run.tasks, ".1f", vmax=100.0)
    ax.set_xlabel("evaluated task")
    ax.set_title(f"{run.name} ({run.method}): accuracy")
    return _save(fig, out)


def plot_loss(run: RunRecord, out: Path) -> Path | None:
    steps = [e for e in run.events if e.get("event") == "step"]
    if not steps:
        return None
    plt = _plt()
    iterations = run.config.get("train", {}).get("iterations", max(e["iteration"] for e in steps))
    fig, ax = plt.subplots(figsize=(7, 3.2), constrained_layout=True)
    for task in sorted({e["task"] for e in steps}):
        pts = [e for e in steps if e["task"] == task]
        ax.plot(
            [(task - 1) * iterations + e["iteration"] for e in pts],
            [e["loss"] for e in pts],
            label=pts[0]["task_name"],
        )
        ax.axvline((task - 1) * iterations, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("optimizer step (tasks in sequence)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{run.name} ({run.method}): loss")
    ax.legend(fontsize=7, ncol=min(4, len(run.tasks)))
    return _save(fig, out)


def _last_report(run: RunRecord) -> list[dict[str, Any]] | None:
    ends = [e for e in run.events if e.get("event") == "task_end" and e.get("rank_report")]
    return ends[-1]["rank_report"] if ends else None


def plot_ranks(run: RunRecord, out: Path) -> Path | None:
    report = _last_report(run)
    if not report or "merged_ranks" not in report[0]:
        return None
    plt = _plt()
    done = max(len(layer["merged_ranks"]) for layer in report)
    data = np.array(
        [layer["merged_ranks"] + [np.nan] * (done - len(layer["merged_ranks"])) for layer in report],
        dtype=float,
    )
    layers = [layer["layer"] for layer in report]
    fig, ax = plt.subplots(figsize=(2.5 + 0.8 * done, 1.0 + 0.22 * len(layers)), constrained_layout=True)
    _heatmap(ax, data, layers, run.tasks[:done], ".0f", vmax=float(report[0].get("r", np.nanmax(data))))
    ax.tick_params(axis="y", labelsize=7)
    mean = np.nanmean(data, axis=0)
    ax.set_title(
        f"{run.name}: surviving ranks of r={report[0].get('r')}\nmean per task: "
        + ", ".join(f"{m:.1f}" for m in mean),
        fontsize=9,
    )
    return _save(fig, out)


def atom_activation(run: RunRecord) -> np.ndarray | None:
    """(after task i, atoms of task j) mean activation rate over layers; NaN where atoms don't exist."""
    ends = [e for e in run.events if e.get("event") == "task_end" and e.get("rank_report")]
    if not ends or "activation_rate_per_task" not in ends[-1]["rank_report"][0]:
        return None
    t = len(run.tasks)
    data = np.full((len(ends), t), np.nan)
    for i, end in enumerate(ends):
        rates = [
            layer["activation_rate_per_task"]
            for layer in end["rank_report"]
            if layer.get("activation_rate_per_task")
        ]
        if rates:
            data[i, : len(rates[0])] = np.mean(np.array(rates, dtype=float), axis=0)
    return data


def plot_atoms(run: RunRecord, out: Path) -> Path | None:
    data = atom_activation(run)
    if data is None:
        return None
    plt = _plt()
    ends = [e["task_name"] for e in run.events if e.get("event") == "task_end" and e.get("rank_report")]
    fig, ax = plt.subplots(
        figsize=(1.5 + 0.9 * data.shape[1], 1.2 + 0.5 * data.shape[0]), constrained_layout=True
    )
    _heatmap(ax, data, [f"after {n}" for n in ends], [f"atoms of {n}" for n in run.tasks], ".2f", vmax=1.0)
    ax.set_title(f"{run.name}: MoRAM atom activation rate at evaluation", fontsize=9)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    with io.atomic_open(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    _plt().close(fig)
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def check_out_dir(out: Path, field: str = "out") -> None:
    """`out` is a folder or can become one: neither it nor a folder above it is a file."""
    probe = Path(os.path.abspath(out))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == Path(os.path.abspath(out)) else f"lies under {probe}, a file"
        raise ConfigError(field, str(out), f"a folder for the report; this {what}")


def write_report(run_dirs: list[Path], out: Path) -> list[Path]:
    """Write the plots and report.md for `run_dirs` into `out`; returns the files written."""
    from rankwise.engine.rundir import path_component

    runs = [read_run(d) for d in run_dirs]
    check_out_dir(out)
    with io.storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    # run names become file names: a name like '../x' must not lead out of `out`
    stems = [
        path_component(str(r.name) if [x.name for x in runs].count(r.name) == 1 else f"{i + 1}_{r.name}", 200)
        for i, r in enumerate(runs)
    ]
    lines = [
        "# rankwise report",
        "",
        "| run | method | backbone | scenario | tasks | Transfer | Average | Last | BWT | BWT (TRACE) | Forgetting |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        m = run.metrics or {}
        status = "" if run.metrics else " (unfinished)"
        lines.append(
            f"| {run.name}{status} | {run.method} | {run.config['backbone']['name']} | "
            f"{run.config['scenario']['name']} | {len(run.tasks)} | {_fmt(m.get('transfer'))} | "
            f"{_fmt(m.get('average'))} | {_fmt(m.get('last'))} | {_fmt(m.get('bwt'))} | "
            f"{_fmt(m.get('bwt_trace'))} | {_fmt(m.get('forgetting'))} |"
        )
    lines += [
        "",
        "Transfer: accuracy on tasks not yet trained (strict upper triangle); Average: all T x T entries;",
        "Last: after the final task; BWT: final minus just-learned accuracy (negative = forgetting);",
        "BWT (TRACE): TRACE's definition, 1/T sum_i min(final - just-learned, 0), for TRACE-paper numbers.",
        "",
    ]
    if len(runs) > 1:  # overlaid curves, seeds averaged with 95% intervals (report_compare.py)
        from rankwise.report_compare import compare_section

        compared, section = compare_section(runs, out, _plt(), _save)
        written += compared
        lines += section
    for stem, run in zip(stems, runs):
        lines += [f"## {run.name}", "", f"Run directory: `{run.path}`", ""]
        for kind, plot in (
            ("accuracy", plot_accuracy),
            ("loss", plot_loss),
            ("ranks", plot_ranks),
            ("atoms", plot_atoms),
        ):
            path = plot(run, out / f"{stem}_{kind}.png")
            if path is not None:
                written.append(path)
                lines += [f"![{kind}]({path.name})", ""]
    io.write_text(out / "report.md", "\n".join(lines))
    written.append(out / "report.md")
    return written
