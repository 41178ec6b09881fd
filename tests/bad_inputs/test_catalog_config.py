"""Catalog: bad run configs. Each is refused with exit 2 and one line naming the field, the value and
what is valid; every file around the case is byte-identical afterwards.

A failing case says ``OUTCOME=<category>`` (traceback / accepted / hang / data lost / unclear), which is
how the catalog's before/after figures are counted. The cases that could hang or exhaust memory on the
old code (a YAML alias bomb, a backtracking regex, a huge rank) run in a subprocess with a time limit
and an address-space limit, so that a regression fails the test instead of the machine.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bad_inputs.catalog import REPO, CliResult, outcome, run_main, tree_digest

CONFIG = REPO / "configs" / "toy_codyra.yaml"
SMALL = {
    "train": {"iterations": 4, "batch_size": 8, "checkpoint_every": 4, "log_every": 2},
    "scenario": {"name": "synthetic", "num_tasks": 2, "train_per_class": 4, "test_per_class": 2},
}


def _config(tmp_path: Path, edit: dict | None = None, text: str | None = None) -> Path:
    """A small toy config in tmp_path/cfg.yaml (``edit``: sections merged over the toy preset)."""
    data = yaml.safe_load(CONFIG.read_text())
    for section, values in {**SMALL, **(edit or {})}.items():
        same_kind = isinstance(data.get(section), dict) and values.get("name", data[section].get("name")) == data[
            section
        ].get("name") if isinstance(values, dict) else False
        if isinstance(values, dict) and same_kind:  # same component: merge over the preset's options
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    data["output"] = {"dir": str(tmp_path / "run")}
    path = tmp_path / "cfg.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    return path


def _check(result: CliResult, before: dict, after: dict, *needles: str) -> str:
    got = outcome(result, before, after, 2, needles)
    assert got == "clean", f"OUTCOME={got}: rc={result.returncode} stderr={result.stderr[-1500:]!r}"
    return result.error_lines[0]


def _limited(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def _cli_limited(args: list[str], cwd: Path, timeout: float = 60.0, memory_gb: float = 8.0) -> CliResult:
    """The CLI in a subprocess under a time and address-space limit; a hang becomes OUTCOME=hang."""
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(REPO / "src")  # the tree under test, even when another copy is installed
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rankwise.cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            timeout=timeout,
            preexec_fn=_limited(int(memory_gb * 2**30)),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"OUTCOME=hang: {args} ran past {timeout} s")
    return CliResult(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


# -- values YAML reads as strings or special floats -------------------------------------------------
@pytest.mark.parametrize(
    "edit,field,needle",
    [
        ({"seed": 2**64}, "seed", "2**63"),
        ({"seed": -1}, "seed", "2**63"),
        ({"train": {"weight_decay": float("nan")}}, "train.weight_decay", "finite"),
        ({"train": {"lr": float("inf")}}, "train.lr", "finite"),
        ({"method": {"name": "codyra", "k_max": float("nan")}}, "method.k_max", "finite"),
        ({"method": {"name": "moram", "tau": float("inf")}}, "method.tau", "finite"),
        ({"method": {"name": "moram", "delta": float("nan")}}, "method.delta", "finite"),
        ({"scenario": {"name": "synthetic", "noise": float("nan")}}, "scenario.noise", "finite"),
        ({"backbone": {"name": ["toy"]}}, "backbone.name", "'toy'"),
        ({"scenario": {"name": {"synthetic": 1}}}, "scenario.name", "'synthetic'"),
        ({"method": {"name": ["codyra"]}}, "method.name", "'codyra'"),
        ({"method": {"name": "codyra", "preset": ["toy"]}}, "method.preset", "a string"),
    ],
    ids=[
        "seed-65-bit", "seed-negative", "weight_decay-nan", "lr-inf", "k_max-nan", "tau-inf", "delta-nan",
        "noise-nan", "backbone-name-list", "scenario-name-dict", "method-name-list", "preset-list",
    ],
)  # fmt: skip
def test_bad_values_are_one_line(tmp_path, edit, field, needle):
    cfg = _config(tmp_path, edit)
    before = tree_digest(tmp_path)
    result = run_main("run", str(cfg), "--quiet", cwd=tmp_path)
    line = _check(result, before, tree_digest(tmp_path), field, needle)
    assert not (tmp_path / "run").exists(), line


def test_non_utf8_config_names_the_file(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(CONFIG.read_bytes().replace(b"name: toy_codyra", b"name: toy_\xff\xfe"))
    before = tree_digest(tmp_path)
    result = run_main("run", str(cfg), "--quiet", cwd=tmp_path)
    line = _check(result, before, tree_digest(tmp_path), str(cfg), "UTF-8")
    assert "byte" in line


# -- allocations that cannot succeed are refused with the numbers -----------------------------------
@pytest.mark.parametrize(
    "edit,field",
    [
        ({"method": {"name": "codyra", "r": 10**12}}, "method.r"),
        ({"method": {"name": "moram", "r": 10**11}}, "method.r"),
        ({"train": {"batch_size": 10**13}}, "train.batch_size"),
    ],
    ids=["codyra-r", "moram-r", "batch-size"],
)
def test_impossible_allocations_are_estimated_and_refused(tmp_path, edit, field):
    cfg = _config(tmp_path, edit)
    before = tree_digest(tmp_path)
    result = _cli_limited(["run", str(cfg), "--quiet"], tmp_path, timeout=90)
    line = _check(result, before, tree_digest(tmp_path), field, "GiB")
    assert "GiB is" in line  # what is needed and what there is


# -- YAML alias bombs -----------------------------------------------------------------------------


def _flow_bomb(levels: int = 9) -> str:
    """One line of flow YAML: level j is a list of 9 aliases of level j - 1 (9**levels strings)."""
    items = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"&l{j} [" + ", ".join([f"*l{j - 1}"] * 9) + "]" for j in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def test_yaml_alias_bomb_under_an_unknown_key_is_refused_quickly(tmp_path):
    """9**9 (387 million) strings if expanded; the old code built their repr for the error message."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"x-bomb: {_flow_bomb()}\n" + CONFIG.read_text())
    before = tree_digest(tmp_path)
    start = time.monotonic()
    result = _cli_limited(["run", str(cfg), "--quiet"], tmp_path, timeout=60, memory_gb=8)
    _check(result, before, tree_digest(tmp_path), str(cfg))
    assert time.monotonic() - start < 30 and len(result.stderr) < 2000


def test_alias_bomb_inside_one_field_names_that_field(tmp_path):
    """Anchors defined inside the field itself (no extra top-level key): the message names the field."""
    text = CONFIG.read_text()
    bomb_field = f"  target_modules: {_flow_bomb()}\n"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text.replace("  name: codyra\n", "  name: codyra\n" + bomb_field, 1))
    before = tree_digest(tmp_path)
    result = _cli_limited(["run", str(cfg), "--quiet"], tmp_path, timeout=60, memory_gb=8)
    line = _check(result, before, tree_digest(tmp_path), "method.target_modules")
    assert len(line) < 1000


def test_alias_bomb_in_a_set_override_is_refused(tmp_path):
    cfg = _config(tmp_path)
    before = tree_digest(tmp_path)
    result = _cli_limited(
        ["run", str(cfg), "--set", f"method.target_modules={_flow_bomb()}", "--quiet"], tmp_path, timeout=60
    )
    line = _check(result, before, tree_digest(tmp_path), "method.target_modules")
    assert len(line) < 1000


# -- target_modules regex with catastrophic backtracking ------------------------------------------
@pytest.mark.parametrize("pattern", [r"([a-z_.0-9]+)+X", r"(.*)*X", r"(\w|\w)*X\.", r"(a|aa)*(b|bb)*Z"])
def test_backtracking_target_regex_does_not_hang(tmp_path, pattern):
    """On `re` each toy module name takes ~2**len(name) steps; the run must end within seconds."""
    cfg = _config(tmp_path, {"method": {"name": "codyra", "r": 2, "target_modules": pattern}})
    before = tree_digest(tmp_path)
    start = time.monotonic()
    result = _cli_limited(["run", str(cfg), "--quiet"], tmp_path, timeout=60)
    # no toy layer matches, so this is refused as "matched no nn.Linear", naming target_modules
    _check(result, before, tree_digest(tmp_path), "target_modules")
    assert time.monotonic() - start < 30


def test_adapter_estimate_counts_what_injection_allocates():
    """adapter_widths * r equals the trainable parameters get_model creates (LoRA: A r x in, B out x r)."""
    import torch

    from rankwise import LoRAConfig, get_model
    from rankwise.backbones.toy import ToyBackboneConfig, build_backbone
    from rankwise.engine.memory import adapter_widths

    for preset, target in (("toy", None), (None, r"(.*\.)*(q|v)_proj"), (None, ["fc1", "out_proj"])):
        model = build_backbone(ToyBackboneConfig(dim=32, layers=2), torch.device("cpu")).model
        config = LoRAConfig(r=3, preset=preset, target_modules=target)
        widths = adapter_widths(model, config)
        wrapped = get_model(model, config)
        wrapped.begin_task("t")
        assert 3 * widths == sum(p.numel() for p in wrapped.trainable_parameters()) > 0, (preset, target)
