"""What the run-kind strategies own beyond the task loop: the table of kinds, export refusals, restoring a
task checkpoint, the per-step report (CoDyRA's surviving ranks) and the caller's config left equal."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from toy_helpers import toy_config

from rankwise.config import RUN_KINDS
from rankwise.engine import checkpoint as ckpt
from rankwise.engine.build import build_parts
from rankwise.engine.continual import run_experiment
from rankwise.engine.strategy import KINDS, AdapterMethod, strategy_for
from rankwise.errors import CheckpointError, ConfigError


def test_every_run_kind_of_the_config_has_a_strategy_and_unknown_names_are_refused():
    assert set(KINDS) == set(RUN_KINDS)
    with pytest.raises(ConfigError) as info:
        strategy_for("lorra")
    assert info.value.field == "method.name" and "'lorra'" in str(info.value) and "codyra" in str(info.value)


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        ("zero-shot", set()),
        ("full", {"merged"}),
        ("lora", {"rankwise", "peft", "merged"}),
        ("codyra", {"rankwise", "peft", "merged"}),
        ("moram", {"rankwise"}),  # a routed mixture: no fixed delta to merge or hand to peft
    ],
)
def test_export_formats_are_the_strategys(method, allowed):
    strategy = strategy_for(method)
    for to in ("rankwise", "peft", "merged"):
        if to in allowed:
            strategy.check_export(method, to)
        else:
            with pytest.raises(ConfigError) as info:
                strategy.check_export(method, to)
            assert info.value.field == "--to" and f"{method!r} run" in str(info.value)


def test_full_restore_loads_the_saved_state_and_refuses_a_foreign_one(tmp_path):
    parts = build_parts(toy_config("full"))
    with torch.no_grad():
        for p in parts.model.parameters():
            p.add_(1.5)
    saved = {k: v.clone() for k, v in parts.model.state_dict().items()}
    # what save_task_checkpoint writes: the strategy's save, in a verified folder
    ckpt.write_dir_atomically(tmp_path / "task", lambda tmp: parts.strategy.save(tmp, parts.model))
    fresh = build_parts(toy_config("full"))
    assert any(not torch.equal(saved[k], v) for k, v in fresh.model.state_dict().items())
    restored = fresh.strategy.restore(fresh.backbone.model, tmp_path / "task")
    assert restored is fresh.backbone.model
    assert all(torch.equal(saved[k], v) for k, v in restored.state_dict().items())
    with pytest.raises(CheckpointError, match="keys differ"):
        strategy_for("full").restore(torch.nn.Linear(2, 2), tmp_path / "task")


def test_codyra_step_report_counts_the_live_gates():
    parts = build_parts(toy_config("codyra"))
    assert isinstance(parts.strategy, AdapterMethod)
    parts.strategy.begin_task(parts.model, "t0")
    layers = list(parts.model.adapter_layers().values())
    assert parts.strategy.step_report(parts.model) == {"surviving_ranks": 8 * len(layers)}
    with torch.no_grad():
        layers[0].gate[:3] = 0
        layers[-1].gate[5:] = 0
    expected = sum(int(torch.count_nonzero(layer.gate)) for layer in layers)
    assert expected == 8 * len(layers) - 6
    assert parts.strategy.step_report(parts.model) == {"surviving_ranks": expected}
    lora = build_parts(toy_config("lora"))
    lora.strategy.begin_task(lora.model, "t0")
    assert lora.strategy.step_report(lora.model) == {}
    full = build_parts(toy_config("full"))
    assert full.strategy.step_report(full.model) == {}


def test_codyra_step_events_carry_k_and_surviving_ranks(tmp_path):
    result = run_experiment(toy_config("codyra", iterations=12, log_every=1), tmp_path / "run", quiet=True)
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    ends = {e["task"]: e for e in events if e["event"] == "task_end"}
    for task, end in ends.items():
        steps = [e for e in events if e["event"] == "step" and e["task"] == task]
        assert [e["iteration"] for e in steps] == list(range(1, 13))
        layers = len(end["rank_report"])
        for e in steps:
            assert {"k", "surviving_ranks"} <= set(e)
            if e["k"] is None:  # no prox yet: every gate drawn from randn is non-zero
                assert e["surviving_ranks"] == 8 * layers
        # end_task merges exactly the gates alive after the last step
        merged = sum(row["merged_ranks"][-1] for row in end["rank_report"])
        assert steps[-1]["surviving_ranks"] == merged


@pytest.mark.parametrize("method", ["zero-shot", "codyra", "moram"])
def test_the_config_object_is_equal_after_a_run(tmp_path, method):
    config = toy_config(method, iterations=3)
    before = copy.deepcopy(config)
    run_experiment(config, tmp_path / "run", quiet=True)
    assert config == before  # dataclass equality: every section and field, nested, compared


def test_no_engine_module_or_the_cli_tests_a_method_name():
    """Only strategy.py maps ``method.name`` to a run kind (its KINDS table and the method table)."""
    import re

    from toy_helpers import REPO

    pattern = re.compile(
        r"""method(\.name)? *(==|!=|in|not in) |(?<!for )\b[\w.]+ (not )?in method_names\(\)|ADAPTER_METHODS|"""
        r"""== "(full|zero-shot)"|"""
        r"""isinstance\([^)]*(MoRAM|CoDyRA|LoRA)"""
    )
    files = [p for p in (REPO / "src" / "rankwise" / "engine").glob("*.py") if p.name != "strategy.py"]
    for path in [*files, REPO / "src" / "rankwise" / "cli.py"]:
        found = pattern.search(path.read_text())
        assert found is None, f"{path.name} tests a method name: {found.group(0)}"
