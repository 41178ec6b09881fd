"""The method table (adapters/methods.py) and the hooks a method plugs in through: one file + one line."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from rankwise import config as run_config
from rankwise.adapters import (
    CoDyRAConfig,
    LoRAConfig,
    LoRALinear,
    MoRAMConfig,
    get_model,
    inject,
    load_model,
    method_names,
    methods,
    model,
    register_method,
)
from rankwise.adapters.codyra import threshold_at
from rankwise.errors import ConfigError, RankwiseError


@dataclass
class PenaltyConfig(LoRAConfig):
    """A made-up method: LoRA plus an L2 penalty on A, scaled by `weight`, and a counted model step."""

    method = "penalty-lora"
    inference_options = ("weight",)
    weight: float = field(default=0.5, metadata={"help": "penalty weight"})


class PenaltyLinear(LoRALinear):
    mergeable = True
    steps: list[tuple[int, int, int]] = []

    def __init__(self, base_layer: nn.Linear, config: PenaltyConfig) -> None:
        super().__init__(base_layer, config)
        self.weight_ = config.weight

    def extra_loss(self) -> torch.Tensor | None:
        return None if self.lora_A is None else self.weight_ * self.lora_A.pow(2).sum()

    def apply_inference_options(self, config: PenaltyConfig) -> None:
        self.weight_ = config.weight

    @classmethod
    def model_step(cls, layers, config, iteration, total_iterations):
        cls.steps.append((len(layers), iteration, total_iterations))
        return {"layers": len(layers)}


@pytest.fixture
def penalty_method(monkeypatch):
    monkeypatch.setattr(methods, "_TABLE", dict(methods._TABLE))  # undone after the test
    PenaltyLinear.steps = []
    return register_method("penalty-lora", PenaltyConfig, PenaltyLinear)


def test_builtin_table_and_older_names_read_it():
    # the first three built-ins; later methods (olora, inflora, ...) are checked by their own tests
    assert method_names()[:3] == ("lora", "codyra", "moram")
    assert dict(list(model.CONFIG_CLASSES.items())[:3]) == {
        "lora": LoRAConfig, "codyra": CoDyRAConfig, "moram": MoRAMConfig
    }
    assert [c.__name__ for c in inject.LAYER_CLASSES.values()][:3] == ["LoRALinear", "CoDyRALinear", "MoRAMLinear"]
    assert run_config.ADAPTER_METHODS == method_names()
    assert run_config.METHODS == ("zero-shot", "full", *method_names())
    assert [methods.get_method(m).layer.mergeable for m in method_names()][:3] == [True, True, False]


def test_a_registered_method_works_everywhere_without_other_edits(penalty_method, tmp_path):
    from rankwise.config import ADAPTER_METHODS, METHODS, config_from_dict

    assert "penalty-lora" in ADAPTER_METHODS and "penalty-lora" in METHODS  # read at use, not at import
    assert model.CONFIG_CLASSES["penalty-lora"] is PenaltyConfig
    assert inject.LAYER_CLASSES[PenaltyConfig] is PenaltyLinear
    cfg = config_from_dict({"name": "t", "method": {"name": "penalty-lora", "r": 2, "weight": "2e-1"},
                            "backbone": {"name": "toy"}, "scenario": {"name": "synthetic"}})  # fmt: skip
    assert isinstance(cfg.method.config, PenaltyConfig) and cfg.method.config.weight == 0.2

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    wrapped = get_model(net, PenaltyConfig(r=2, weight=0.2, target_modules=["0", "1"]))
    assert wrapped.extra_loss() is None  # no live factors yet
    wrapped.begin_task("a")
    layers = list(wrapped.adapter_layers().values())
    expected = sum(0.2 * (layer.lora_A.detach() ** 2).sum() for layer in layers)  # by hand
    torch.testing.assert_close(wrapped.extra_loss().detach(), expected, rtol=0, atol=0)
    assert wrapped.after_optimizer_step(3, 10) == {"layers": 2} and PenaltyLinear.steps == [(2, 3, 10)]
    wrapped.end_task()
    wrapped.save_pretrained(tmp_path / "a")
    again = load_model(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), tmp_path / "a")
    assert type(again.config) is PenaltyConfig and again.config.weight == 0.2
    assert wrapped.mergeable and isinstance(wrapped.merge_and_unload(), nn.Sequential)


def test_register_method_refuses_bad_entries(penalty_method):
    assert register_method("penalty-lora", PenaltyConfig, PenaltyLinear) == penalty_method  # same: no-op
    with pytest.raises(ConfigError, match="not taken already"):
        register_method("penalty-lora", PenaltyConfig, LoRALinear)
    with pytest.raises(ConfigError, match=r"PenaltyConfig.method.*'other'"):
        register_method("other", PenaltyConfig, PenaltyLinear)
    for name in ("full", "zero-shot", "Bad Name", ""):
        with pytest.raises(ConfigError, match="lower-case name"):
            register_method(name, PenaltyConfig, PenaltyLinear)
    with pytest.raises(ConfigError, match="subclass of rankwise.adapters.AdapterLayer"):
        register_method("penalty-lora", PenaltyConfig, nn.Linear)
    with pytest.raises(ConfigError, match="subclass of rankwise.adapters.AdapterConfig"):
        register_method("penalty-lora", dict, PenaltyLinear)
    for ref, why in (("no_such_module_xyz:C", "ModuleNotFoundError"), ("rankwise.adapters.lora:Nope", "AttributeError"),
                     ("rankwise.adapters.lora", "a class or a 'package.module:Class'")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"penalty-lora.config=.*{why}"):
            register_method("penalty-lora", ref, PenaltyLinear)


def test_the_table_takes_module_class_references(monkeypatch):
    monkeypatch.setattr(methods, "_TABLE", dict(methods._TABLE))
    entry = register_method("penalty-lora", f"{__name__}:PenaltyConfig", f"{__name__}:PenaltyLinear")
    assert (entry.config, entry.layer) == (PenaltyConfig, PenaltyLinear)
    assert register_method("penalty-lora", PenaltyConfig, PenaltyLinear) == entry  # the same classes


def test_unregistered_config_is_refused_before_the_model_is_touched():
    @dataclass
    class Unknown(LoRAConfig):
        method = "unknown"

    net = nn.Linear(4, 4)
    with pytest.raises(ConfigError, match="method='unknown'"):
        get_model(net, Unknown(target_modules=".*"))
    assert net.weight.requires_grad  # not frozen: refused first


def test_base_hooks_are_no_ops_and_codyra_step_is_its_own(tmp_path):
    torch.manual_seed(0)
    lora = get_model(nn.Sequential(nn.Linear(4, 4)), LoRAConfig(r=2, target_modules=["0"]))
    lora.begin_task("a")
    assert lora.after_optimizer_step(1, 4) == {} and lora.extra_loss() is None and not lora.needs_task_inputs
    layer = next(iter(lora.adapter_layers().values()))
    layer.collect_task_inputs(torch.ones(2, 4))  # accepted and ignored
    with pytest.raises(ConfigError, match="tau=0.1 .*method 'lora': it has none; methods with some: moram"):
        lora.set_inference_options(tau=0.1)

    cfg = CoDyRAConfig(r=3, target_modules=["0"], dense_fraction=0.0, k_max=0.5, ramp_steps=2)
    codyra = get_model(nn.Sequential(nn.Linear(4, 4)), cfg)
    codyra.begin_task("a")
    gate = next(iter(codyra.adapter_layers().values())).gate
    with torch.no_grad():
        gate.copy_(torch.tensor([0.1, 2.0, -3.0]))
    k = threshold_at(4, 4, 0.0, 0.5, 2)
    assert codyra.after_optimizer_step(4, 4) == {"k": k} and k == 0.5
    # reference operator: g > k -> g - k, g < -k -> g + k, then |g| < k -> 0
    torch.testing.assert_close(gate.detach(), torch.tensor([0.0, 1.5, -2.5]))

    moram = get_model(nn.Sequential(nn.Linear(4, 4)), MoRAMConfig(r=2, target_modules=["0"]))
    with pytest.raises(RankwiseError, match="MoRAM cannot be merged"):
        moram.merge_and_unload()
    moram.set_inference_options(top_k=3, tau=0.5, delta=0.0)
    layer = next(iter(moram.adapter_layers().values()))
    assert (layer.budget, layer.tau, layer.delta_threshold) == (3, 0.5, 0.0)


class InputsLinear(LoRALinear):
    """A made-up method that records the inputs of both feature-collection passes (as InfLoRA would)."""

    mergeable = True
    needs_task_inputs = True
    needs_task_inputs_at_end = True

    def __init__(self, base_layer: nn.Linear, config: LoRAConfig) -> None:
        super().__init__(base_layer, config)
        self.seen: list[tuple[bool, torch.Tensor]] = []

    def collect_task_inputs(self, x: torch.Tensor) -> None:
        self.seen.append((self.task_active, x.clone()))


@dataclass
class InputsConfig(LoRAConfig):
    method = "inputs-lora"


def test_collecting_task_inputs_hands_each_layer_its_own_inputs(monkeypatch):
    monkeypatch.setattr(methods, "_TABLE", dict(methods._TABLE))
    register_method("inputs-lora", InputsConfig, InputsLinear)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    w0, b0 = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    wrapped = get_model(net, InputsConfig(r=2, target_modules=["0", "2"]))
    assert wrapped.needs_task_inputs and wrapped.needs_task_inputs_at_end
    first, second = wrapped.adapter_layers()["0"], wrapped.adapter_layers()["2"]
    x = torch.randn(5, 4)
    with torch.no_grad(), wrapped.collecting_task_inputs():
        out = wrapped(x)
    assert [active for active, _ in first.seen] == [False] and len(second.seen) == 1
    torch.testing.assert_close(first.seen[0][1], x, rtol=0, atol=0)
    torch.testing.assert_close(second.seen[0][1], torch.relu(x @ w0.T + b0))  # by hand, no adapter yet
    assert not second.seen[0][1].requires_grad
    wrapped(x)  # outside the context: nothing collected, the hooks are gone
    assert len(first.seen) == 1
    torch.testing.assert_close(out, net[2].base_layer(torch.relu(x @ w0.T + b0)))  # outputs unchanged

    wrapped.begin_task("a")
    with wrapped.collecting_task_inputs():
        wrapped(x)
    assert [active for active, _ in first.seen] == [False, True]
    lora = get_model(nn.Sequential(nn.Linear(4, 4)), LoRAConfig(r=2, target_modules=["0"]))
    assert not lora.needs_task_inputs and not lora.needs_task_inputs_at_end


def test_inference_options_come_from_the_method_config(penalty_method):
    from rankwise.cli import inference_options

    assert inference_options(["method.weight=3e-1"]) == {"weight": 0.3}  # a registered method's option
    with pytest.raises(ConfigError, match=r"method.top_k, method.tau or method.delta \(moram inference\); "
                                          r"method.top_k or method.tau \(moe-lora inference\); "
                                          r"method.weight \(penalty-lora inference\)"):  # fmt: skip
        inference_options(["method.r=2"])
    torch.manual_seed(0)
    wrapped = get_model(nn.Sequential(nn.Linear(4, 3)), PenaltyConfig(r=2, weight=0.2, target_modules=["0"]))
    wrapped.set_inference_options(weight=0.7)
    assert wrapped.config.weight == 0.7 and next(iter(wrapped.adapter_layers().values())).weight_ == 0.7
    with pytest.raises(ConfigError, match=r"tau=0.1 .*method 'penalty-lora': weight"):
        wrapped.set_inference_options(tau=0.1)
    assert wrapped.config.weight == 0.7


def test_list_and_config_show_read_the_table(penalty_method, capsys):
    import ast
    import dataclasses
    from pathlib import Path

    from rankwise.cli import main

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "penalty-lora" in lines[0]
    src = Path(methods.__file__).parent
    for name in ("lora", "codyra", "moram"):  # each method's line: the first line of its file's docstring
        first = ast.get_docstring(ast.parse((src / f"{name}.py").read_text())).splitlines()[0]
        assert f"  {name:<18} {first}" in lines
    for name, cls in (("penalty-lora", PenaltyConfig), ("codyra", CoDyRAConfig), ("moram", MoRAMConfig)):
        assert main(["config", "show", "--method", name]) == 0
        by_key = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        assert sorted(by_key) == sorted(["method.name"] + [f"method.{f.name}" for f in dataclasses.fields(cls)])
        for f in dataclasses.fields(cls):
            assert f"= {getattr(cls(), f.name)!r}" in by_key[f"method.{f.name}"] and f.metadata["help"] in by_key[
                f"method.{f.name}"
            ]
    assert main(["config", "show", "--method", "nope"]) == 2
    assert "'penalty-lora'" in capsys.readouterr().err
