"""The `rankwise` command: list, run -> eval -> report end to end, and one-line errors with exit code 2."""

import json
from pathlib import Path

import pytest
import torch

from rankwise import cli

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--set",
    "train.iterations=6",
    "--set",
    "train.batch_size=16",
    "--set",
    "scenario.train_per_class=8",
    "--set",
    "scenario.num_tasks=2",
]


def test_list_shows_methods_scenarios_backbones_and_presets(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("codyra", "moram", "zero-shot", "synthetic", "toy", "toy_codyra.yaml", "target presets"):
        assert word in out


def test_run_eval_report_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "demo"
    code = cli.main(
        [
            "run",
            str(REPO / "configs" / "toy_codyra.yaml"),
            *SMALL,
            "--set",
            f"output.dir={run_dir}",
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"Last {metrics['last']:.2f}" in out
    for name in (
        "config.yaml",
        "accuracy_matrix.csv",
        "accuracy_matrix.json",
        "events.jsonl",
        "metrics.json",
    ):
        assert (run_dir / name).is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["task_1_syn0", "task_2_syn1"]

    assert cli.main(["eval", str(run_dir), "--tasks", "syn1", "--quiet"]) == 0
    out = capsys.readouterr().out.split()
    last_row = json.loads((run_dir / "accuracy_matrix.json").read_text())["matrix"][-1]
    assert out == ["syn1", f"{last_row[1]:.2f}"]

    assert cli.main(["report", str(run_dir)]) == 0
    written = capsys.readouterr().out.split()
    assert str(run_dir / "report" / "report.md") in written
    assert (run_dir / "report" / "toy_codyra_ranks.png").is_file()

    # the same command again refuses: the run is finished
    assert (
        cli.main(
            [
                "run",
                str(REPO / "configs" / "toy_codyra.yaml"),
                *SMALL,
                "--set",
                f"output.dir={run_dir}",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "finished run" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "missing.yaml"], "an existing YAML file"),
        (["run", str(REPO / "configs" / "toy_codyra.yaml"), "--set", "train.lr=-1"], "train.lr=-1"),
        (["run", str(REPO / "configs" / "toy_codyra.yaml"), "--set", "method.name=ewc"], "method.name='ewc'"),
        (["run", str(REPO / "configs" / "toy_codyra.yaml"), "--set", "backbone.name=bert"], "'toy'"),
        (["eval", "not_a_run_dir"], "not a rankwise run directory"),
        (["report", "not_a_run_dir"], "not a rankwise run directory"),
        (["data", "check", "--scenario", "mtil", "--root", "no/such/folder"], "--root"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()



@pytest.mark.parametrize(
    "env,printed",
    [({"WORLD_SIZE": "2", "RANK": "1"}, False), ({"WORLD_SIZE": "2", "RANK": "0"}, True),
     ({"WORLD_SIZE": "2", "RANK": "5"}, True)],
)  # fmt: skip
def test_only_the_reporting_rank_prints_errors(env, printed, capsys, tmp_path, monkeypatch):
    """Rank 1 of a torchrun launch stays quiet; rank 0 prints; a malformed launch env still prints."""
    monkeypatch.chdir(tmp_path)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["eval", "not_a_run_dir"]) == 2
    err = capsys.readouterr().err.strip()
    assert ("not a rankwise run directory" in err) is printed

def test_resume_with_changed_config_prints_the_diff(tmp_path, capsys):
    run_dir = tmp_path / "r"
    config = str(REPO / "configs" / "toy_codyra.yaml")
    assert cli.main(["run", config, *SMALL, "--set", f"output.dir={run_dir}", "--quiet"]) == 0
    capsys.readouterr()
    assert (
        cli.main(["run", config, *SMALL, "--set", "train.lr=0.1", "--resume", str(run_dir), "--quiet"]) == 2
    )
    err = capsys.readouterr().err
    assert "+  lr: 0.1" in err and "-  lr: 0.005" in err and "Traceback" not in err


def test_list_shows_each_presets_one_line_description(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    first_comment = (REPO / "configs" / "toy_codyra.yaml").read_text().splitlines()[0].lstrip("# ").strip()
    line = next(x for x in out.splitlines() if "toy_codyra.yaml" in x)
    assert line.split("toy_codyra.yaml", 1)[1].strip() == first_comment
    assert cli.preset_description(REPO / "pyproject.toml") == ""


def test_threads_flag_and_data_alias_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    try:
        code = cli.main(
            [
                "run",
                str(REPO / "configs" / "toy_zero_shot.yaml"),
                "--set",
                "data.num_tasks=2",
                "--set",
                f"output.dir={run_dir}",
                "--threads",
                "2",
                "--quiet",
            ]
        )
        assert code == 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    saved = (run_dir / "config.yaml").read_text()
    assert "threads: 2" in saved and "num_tasks: 2" in saved
    assert len(json.loads((run_dir / "tasks.json").read_text())["tasks"]) == 2
    capsys.readouterr()
    bad = ["run", str(REPO / "configs" / "toy_zero_shot.yaml"), "--threads", "0"]
    assert cli.main([*bad, "--set", f"output.dir={tmp_path / 'bad'}"]) == 2
    assert not (tmp_path / "bad").exists()
    assert "threads=0" in capsys.readouterr().err


def test_run_prints_the_matrix_and_writes_the_report(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    config = str(REPO / "configs" / "toy_codyra.yaml")
    assert cli.main(["run", config, *SMALL, "--set", f"output.dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run_dir / "accuracy_matrix.json").read_text())
    rows = [line.split() for line in out.splitlines() if line.startswith(("zero-shot", "after syn"))]
    printed = [[float(v) for v in row[-2:]] for row in rows if len(row) in (3, 4)]
    assert printed == [[round(v, 1) for v in row] for row in saved["matrix"]]
    assert (run_dir / "report" / "report.md").is_file()
    assert (run_dir / "report" / "toy_codyra_accuracy.png").stat().st_size > 1000


def test_an_unwrapped_storage_oserror_is_one_line_and_other_oserrors_still_raise(capsys, monkeypatch):
    import errno

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.png")

    monkeypatch.setitem(cli.COMMANDS, "list", full)
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rankwise list: error: cannot write /data/x.png: no space left on the device: free space there " \
        "(or choose another output.dir)"

    def other(args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setitem(cli.COMMANDS, "list", other)
    with pytest.raises(OSError):
        cli.main(["list"])


def test_resume_of_a_finished_run_is_one_line_on_stderr_and_exit_0(tmp_path, capsys):
    run_dir = tmp_path / "r"
    config = str(REPO / "configs" / "toy_codyra.yaml")
    assert cli.main(["run", config, *SMALL, "--set", f"output.dir={run_dir}", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["run", config, *SMALL, "--resume", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == (
        f"rankwise run: {run_dir} is already finished; nothing to resume (results in {run_dir / 'metrics.json'})"
    )
