"""The run-kind strategies (zero-shot / full / adapter), the caller's config left untouched by a run,
and MoRAM activation counts summed over ranks by asking the layers."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from toy_helpers import REPO, toy_config

from rankwise.adapters import MoRAMConfig, get_model
from rankwise.engine import distributed as ddp
from rankwise.engine import memory
from rankwise.engine.build import build_parts
from rankwise.engine.continual import RunResult, evaluate_run, run_experiment
from rankwise.engine.results import RunResult as ResultsRunResult
from rankwise.engine.strategy import AdapterMethod, FullFineTuning, ZeroShot, strategy_for
from rankwise.errors import ConfigError


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_leaves_the_callers_config_unchanged(tmp_path, method):
    config = toy_config(method, iterations=2)
    before, method_before = copy.deepcopy(config.to_dict()), copy.deepcopy(config.method)
    result = run_experiment(config, tmp_path / "run", quiet=True)
    assert config.to_dict() == before  # no output.dir filled in, no method section resolved
    assert config.output.dir is None and config.method == method_before  # e.g. no preset filled in
    build_parts(config)
    evaluate_run(result.run_dir)
    assert config.to_dict() == before and config.method == method_before
    # what the run used is the resolved copy, saved in config.yaml
    saved = (result.run_dir / "config.yaml").read_text()
    assert f"dir: {tmp_path / 'run'}" in saved
    if method == "lora":
        assert "preset: toy" in saved and "target_modules" in saved


def test_run_result_lives_with_the_results_and_keeps_its_old_import():
    assert RunResult is ResultsRunResult


def test_strategy_per_run_kind():
    assert isinstance(strategy_for("zero-shot"), ZeroShot) and not strategy_for("zero-shot").trains
    assert isinstance(strategy_for("full"), FullFineTuning) and strategy_for("full").trains
    for name in ("lora", "codyra", "moram"):
        assert isinstance(strategy_for(name), AdapterMethod)
    full = build_parts(toy_config("full"))
    params = full.strategy.trainable(full.model)
    assert set(params) == {n for n, _ in full.model.named_parameters()}
    assert all(p.requires_grad for p in params.values())
    assert full.strategy.after_step(full.model) is None and not full.strategy.keeps_optimizer(full.model)
    with pytest.raises(ConfigError, match="this run is 'full'"):
        full.strategy.set_inference_options(full.model, "full", {"tau": 0.5})
    lora = build_parts(toy_config("lora"))
    lora.strategy.begin_task(lora.model, "t0")
    params = lora.strategy.trainable(lora.model)
    assert [id(p) for p in params.values()] == [id(p) for p in lora.model.trainable_parameters()]
    assert all("lora_" in n for n in params)
    codyra = build_parts(toy_config("codyra"))
    codyra.strategy.begin_task(codyra.model, "t0")
    # what the after-step hook returns is what is logged with the step: CoDyRA's threshold k
    assert set(codyra.strategy.after_step(codyra.model)(20, 20)) == {"k"}


def test_the_loop_has_no_method_name_tests():
    pattern = re.compile(r"""== "(full|zero-shot)"|!= "zero-shot"|in ADAPTER_METHODS|"(moram|codyra|lora)\"""")
    engine = REPO / "src" / "rankwise" / "engine"
    for name in ("continual", "build", "setup", "runstate", "trainer", "distributed", "memory", "results"):
        text = (engine / f"{name}.py").read_text()
        assert not pattern.search(text), f"{name}.py tests a method name: {pattern.search(text).group(0)}"


def _moram_model(seed: int = 0):
    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4))
    model = get_model(base, MoRAMConfig(r=3, top_k=2, tau=0.5, delta=0.3, target_modules=["0", "1"]))
    for t in range(2):
        model.begin_task(f"t{t}")
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.normal_()
        model.end_task()
    return model.eval()


def test_activation_counts_are_summed_over_ranks_by_the_layers(monkeypatch):
    """Two 'ranks' each evaluate half the inputs; summing their counts through reduce_activation_stats
    (all_reduce replaced by adding the other rank's tensor) gives the counts of one process on all."""
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    whole, rank0, rank1 = _moram_model(), _moram_model(), _moram_model()
    for model, inputs in ((whole, x), (rank0, x[:4]), (rank1, x[4:])):
        with model.track_activations():
            model(inputs)
    others = []
    for layer in rank1.adapter_layers().values():
        others += [layer.atom_hits.clone(), torch.tensor([float(layer.tokens_seen)], dtype=torch.float64)]
    queue = iter(others)

    def fake_all_reduce(t, op=None):
        t.add_(next(queue))

    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    ddp.reduce_activation_stats(rank0, ddp.DistContext(world_size=2, rank=0, local_rank=0))
    assert next(queue, None) is None  # every layer combined both of its counts
    for (name, a), b in zip(rank0.adapter_layers().items(), whole.adapter_layers().values()):
        assert a.tokens_seen == b.tokens_seen == 10, name
        assert torch.equal(a.atom_hits, b.atom_hits) and a.atom_hits.sum() > 0
    assert rank0.rank_report() == whole.rank_report()
    # one process: nothing to combine, nothing changes
    before = [layer.atom_hits.clone() for layer in rank1.adapter_layers().values()]
    ddp.reduce_activation_stats(rank1, ddp.SINGLE)
    assert all(torch.equal(b, layer.atom_hits) for b, layer in zip(before, rank1.adapter_layers().values()))


def test_memory_estimate_counts_the_bank_only_for_methods_that_grow_one(monkeypatch):
    from rankwise.adapters import LoRAConfig

    monkeypatch.setattr(memory, "available_bytes", lambda device: (1, "available"))
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    for config, grows in ((MoRAMConfig(r=4, target_modules=["0"]), True), (LoRAConfig(r=4, target_modules=["0"]), False)):
        with pytest.raises(ConfigError) as info:
            memory.check_adapter_memory(model, config, 3, torch.device("cpu"))
        assert ("kept of earlier tasks" in str(info.value)) == grows
