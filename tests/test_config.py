"""Run config: YAML loading, --set overrides, and errors that name the key path and valid choices."""

from pathlib import Path

import pytest
import yaml

from rankwise.config import RunConfig, apply_override, config_from_dict, load_config
from rankwise.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def base() -> dict:
    return {
        "name": "t",
        "method": {"name": "codyra", "r": 4},
        "backbone": {"name": "toy"},
        "scenario": {"name": "synthetic"},
    }


def with_(path: str, value) -> dict:
    data = base()
    apply_override(
        data, f"{path}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    )
    return data


def test_defaults_are_filled_and_resolved_dict_round_trips():
    cfg = config_from_dict(base())
    assert isinstance(cfg, RunConfig)
    assert cfg.train.optimizer == "adamw" and cfg.train.iterations == 500 and cfg.eval.batch_size == 128
    assert cfg.backbone.config.dim == 32 and cfg.scenario.config.num_tasks == 3
    resolved = cfg.to_dict()
    assert resolved["backbone"]["vocab_size"] == 64  # default written out
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again.to_dict() == resolved


def test_overrides_are_yaml_parsed_and_applied_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(
        path,
        [
            "train.lr=1e-4",
            "train.grad_clip=null",
            "train.grad_clip=1.5",
            "train.bf16=true",
            "train.betas=[0.9, 0.95]",
            "scenario.num_tasks=5",
            "method.r=2",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-4)  # "1e-4" is a string to YAML 1.1; coerced to float
    assert cfg.train.grad_clip == 1.5 and cfg.train.bf16 is True and cfg.train.betas == [0.9, 0.95]
    assert cfg.scenario.config.num_tasks == 5 and cfg.method.options["r"] == 2


@pytest.mark.parametrize(
    "path,value,field,expect",
    [
        ("train.lr", -1.0, "train.lr", "positive"),
        ("train.lr", "fast", "train.lr", "a number"),
        ("train.iterations", 2.5, "train.iterations", "an integer"),
        ("train.iterations", 0, "train.iterations", ">= 1"),
        ("train.optimizer", "sgd", "train.optimizer", "'adamw', 'adam'"),
        ("train.schedule", "linear", "train.schedule", "'cosine', 'constant'"),
        ("train.bf16", "yes please", "train.bf16", "true or false"),
        ("train.betas", [0.9], "train.betas", "two numbers"),
        ("train.warmup_iterations", 600, "train.warmup_iterations", "[0, train.iterations=500)"),
        ("train.lerning_rate", 1.0, "train.lerning_rate", "'lr'"),
        ("eval.batch_size", 0, "eval.batch_size", ">= 1"),
        ("backbone.width", 3, "backbone.width", "'dim'"),
        ("backbone.heads", 5, "backbone.heads", "divisor of dim=32"),
        ("scenario.noise", 2.0, "scenario.noise", "[0, 1]"),
        ("scenario.num_task", 2, "scenario.num_task", "'num_tasks'"),
        ("method.r", 0, "method.r", ">= 1"),
        ("method.rank", 4, "method.rank", "lora_alpha"),
        ("method.prox", "hard", "method.prox", "soft"),
        ("method.preset", "gpt", "method.preset", "toy"),
        ("device", "tpu", "device", "'cpu'"),
        ("seed", "zero", "seed", "an integer"),
        ("output.dir", 3, "output.dir", "a string"),
    ],
)
def test_bad_values_name_the_key_and_what_is_valid(path, value, field, expect):
    with pytest.raises(ConfigError) as info:
        config_from_dict(with_(path, value))
    assert info.value.field == field
    assert expect in str(info.value)


@pytest.mark.parametrize(
    "section,name,choices",
    [("method", "ewc", "'codyra'"), ("backbone", "resnet", "'toy'"), ("scenario", "cifar", "'synthetic'")],
)
def test_unknown_component_names_list_the_choices(section, name, choices):
    data = base()
    data[section] = {"name": name}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field == f"{section}.name" and choices in str(info.value)


def test_missing_and_unknown_top_level_keys():
    data = base()
    del data["scenario"]
    with pytest.raises(ConfigError, match="scenario"):
        config_from_dict(data)
    data = base() | {"trian": {}}
    with pytest.raises(ConfigError, match="trian.*'train'"):
        config_from_dict(data)


def test_non_adapter_methods_take_no_options():
    data = base()
    data["method"] = {"name": "full", "r": 4}
    with pytest.raises(ConfigError, match="method.r"):
        config_from_dict(data)
    data["method"] = {"name": "zero-shot"}
    assert config_from_dict(data).method.name == "zero-shot"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="an existing YAML file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: [unclosed\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


@pytest.mark.parametrize("override", ["train.lr", "=3", "train..lr=3", "name.x=1"])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError):
        apply_override(base(), override)


def test_every_preset_in_configs_validates():
    presets = sorted((REPO / "configs").glob("*.yaml"))
    assert any(p.name == "toy_codyra.yaml" for p in presets)
    for path in presets:
        if path.name.startswith("toy_"):
            load_config(path)


# -- data.* is an alias of scenario.* ---------------------------------------------------------------
def test_data_alias_in_overrides_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    cfg = load_config(path, ["data.num_tasks=5", "scenario.noise=0.25", "data.noise=0.5"])
    assert cfg.scenario.config.num_tasks == 5 and cfg.scenario.config.noise == 0.5  # in order
    assert "data" not in cfg.to_dict() and cfg.to_dict()["scenario"]["num_tasks"] == 5
    path.write_text(yaml.safe_dump(base() | {"data": {"num_tasks": 4}}))
    assert load_config(path).scenario.config.num_tasks == 4
    assert load_config(path, ["scenario.num_tasks=6"]).scenario.config.num_tasks == 6


def test_data_root_reaches_the_scenario_of_the_documented_command(tmp_path):
    cfg = load_config(REPO / "configs" / "mtil_order1_codyra.yaml", [f"data.root={tmp_path}"])
    assert cfg.scenario.config.root == str(tmp_path)
    cfg = load_config(REPO / "configs" / "mtil_order1_codyra.yaml", [f"scenario.root={tmp_path}"])
    assert cfg.scenario.config.root == str(tmp_path)


def test_data_alias_errors_name_the_alias_and_the_scenario_fields(tmp_path):
    with pytest.raises(ConfigError) as info:
        apply_override(base(), "data.num_task=2")
    assert info.value.field == "data.num_task" and "'num_tasks'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config_from_dict(base() | {"data": {"nois": 0.1}})
    assert info.value.field == "data.nois" and "'noise'" in str(info.value)
    data = base()
    data["scenario"]["num_tasks"] = 3
    with pytest.raises(ConfigError, match=r"data.num_tasks=4.*scenario.num_tasks=3"):
        config_from_dict(data | {"data": {"num_tasks": 4}})
    with pytest.raises(ConfigError, match="data"):
        config_from_dict(base() | {"data": [1, 2]})


# -- threads ------------------------------------------------------------------------------------------
def test_threads_key():
    assert config_from_dict(base()).threads is None
    cfg = config_from_dict(base() | {"threads": 2})
    assert cfg.threads == 2 and cfg.to_dict()["threads"] == 2
    for bad, expect in ((0, "positive"), ("two", "an integer"), (1.5, "an integer")):
        with pytest.raises(ConfigError) as info:
            config_from_dict(base() | {"threads": bad})
        assert info.value.field == "threads" and expect in str(info.value)


# -- generic annotations in component config dataclasses -------------------------------------------
def test_generic_annotations_are_checked_and_coerced():
    import dataclasses
    from typing import Any, Literal, Optional, Union

    from rankwise.config import build_dataclass

    @dataclasses.dataclass
    class Options:
        weights: dict[str, float] = dataclasses.field(default_factory=dict)
        shape: tuple[int, ...] = (1,)
        pair: tuple[str, int] = ("a", 1)
        mode: Literal["fast", "exact"] = "fast"
        scales: Optional[list[float]] = None
        cap: Union[int, dict[str, int], None] = None
        anything: Any = None
        raw: dict = dataclasses.field(default_factory=dict)

    built = build_dataclass(
        Options,
        {
            "weights": {"a": 1, "b": "1e-3"},
            "shape": [2, 3],
            "pair": ["x", 4],
            "mode": "exact",
            "scales": ["2e-1", 3],
            "cap": {"t": 5},
            "anything": [1, "x"],
            "raw": {"k": [1]},
        },
        "scenario",
    )
    assert built.weights == {"a": 1.0, "b": 1e-3} and isinstance(built.weights["a"], float)
    assert built.shape == (2, 3) and built.pair == ("x", 4) and built.mode == "exact"
    assert built.scales == [0.2, 3.0] and built.cap == {"t": 5} and built.raw == {"k": [1]}
    assert build_dataclass(Options, {"cap": 7, "scales": None}, "s").cap == 7

    bad = [
        ({"weights": {"a": "heavy"}}, "scenario.weights.a", "a number"),
        ({"weights": [1, 2]}, "scenario.weights", "a mapping"),
        ({"shape": [2, "x"]}, "scenario.shape[1]", "an integer"),
        ({"pair": ["x"]}, "scenario.pair", "exactly 2 items"),
        ({"pair": ["x", "y"]}, "scenario.pair[1]", "an integer"),
        ({"mode": "slow"}, "scenario.mode", "'fast', 'exact'"),
        ({"mode": True}, "scenario.mode", "'fast', 'exact'"),
        ({"scales": "big"}, "scenario.scales", "a list"),
        ({"cap": {"t": "many"}}, "scenario.cap.t", "an integer"),
        ({"cap": "many"}, "scenario.cap", "an integer or a mapping"),
    ]
    for data, field, expect in bad:
        with pytest.raises(ConfigError) as info:
            build_dataclass(Options, data, "scenario")
        assert info.value.field == field, (data, info.value)
        assert expect in str(info.value), (data, str(info.value))


def test_every_registered_component_config_is_readable():
    """Every backbone/scenario config class's annotations can be checked (no TypeError on generics)."""
    import dataclasses
    import typing

    from rankwise import registry
    from rankwise.config import _coerce

    for table in (registry.BACKBONES, registry.SCENARIOS):
        for entry in table.values():
            try:
                cls = entry.load_config_class()
            except ImportError:
                continue
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if not f.init:
                    continue
                default = f.default if f.default is not dataclasses.MISSING else None
                if f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                if default is None or isinstance(default, Path):
                    continue
                try:
                    _coerce(default, hints[f.name], f"{entry.name}.{f.name}")
                except ConfigError as exc:
                    pytest.fail(f"default of {entry.name}.{f.name} does not pass its own annotation: {exc}")


# -- one typed pass for every section (issue 10 item 2) ---------------------------------------------
def test_yaml_exponent_numbers_are_floats_in_every_section(tmp_path):
    """PyYAML reads 5e-3 (no dot) as a string; method, train and scenario fields all read it as a float."""
    text = (
        "name: t\nmethod: {name: codyra, r: 4, k_max: 5e-3, dense_fraction: 5e-1}\nbackbone: {name: toy}\n"
        "scenario: {name: synthetic, noise: 2e-1}\ntrain: {lr: 5e-4, weight_decay: 1e-2}\n"
    )
    assert isinstance(yaml.safe_load(text)["method"]["k_max"], str)  # what the old code choked on
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.method.options["k_max"] == 0.005 and type(cfg.method.options["k_max"]) is float
    assert cfg.method.options["dense_fraction"] == 0.5
    assert cfg.train.lr == 5e-4 and cfg.train.weight_decay == 0.01 and type(cfg.train.lr) is float
    assert cfg.scenario.config.noise == 0.2 and type(cfg.scenario.config.noise) is float
    assert cfg.method.config.k_max == 0.005  # the typed adapter config, built in the same pass
    moram = config_from_dict({**base(), "method": {"name": "moram", "r": 4, "tau": "1e-2", "delta": "-5e-1"}})
    assert moram.method.options["tau"] == 0.01 and moram.method.options["delta"] == -0.5
    assert moram.method.config.tau == 0.01 and moram.method.config.delta == -0.5
    assert config_from_dict(with_("method.k_max", "5e-3")).method.options["k_max"] == 0.005


@pytest.mark.parametrize(
    "path,value,field",
    [
        ("method.k_max", ".nan", "method.k_max"),
        ("method.k_max", "nan", "method.k_max"),
        ("method.k_max", "fast", "method.k_max"),
        ("method.r", "'4'", "method.r"),  # a quoted string is not an integer
        ("method.r", 4.5, "method.r"),
        ("method.tau", ".inf", "method.tau"),
        ("method.lora_alpha", "-.inf", "method.lora_alpha"),
        ("train.weight_decay", ".nan", "train.weight_decay"),
        ("train.grad_clip", ".inf", "train.grad_clip"),
        ("scenario.noise", ".nan", "scenario.noise"),
        ("seed", 2**64, "seed"),
        ("seed", -3, "seed"),
        ("backbone.name", ["toy"], "backbone.name"),
    ],
)
def test_typed_pass_refuses_with_the_path(path, value, field):
    if isinstance(value, str):  # as typed after --set (parsed as YAML)
        data = base()
        apply_override(data, f"{path}={value}")
    else:
        data = with_(path, value)
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert info.value.field == field, info.value
    assert "\n" not in str(info.value)


def test_config_that_expands_beyond_the_bound_is_refused(tmp_path):
    from rankwise.config_types import MAX_CONFIG_VALUES, check_size

    levels = ["&l0 [x, x, x, x, x, x, x, x, x]"] + [f"&l{j} [" + ", ".join([f"*l{j - 1}"] * 9) + "]" for j in range(1, 7)]
    (tmp_path / "c.yaml").write_text(f"name: t\nmethod: {{name: codyra, target_modules: [{', '.join(levels)}]}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.field == "method.target_modules" and len(str(info.value)) < 600
    check_size(list(range(MAX_CONFIG_VALUES - 1)), "ok")  # exactly at the bound: accepted
    with pytest.raises(ConfigError):
        check_size(list(range(MAX_CONFIG_VALUES)), "too big")


def test_error_messages_shorten_huge_values():
    from rankwise.errors import MAX_VALUE_REPR

    bomb = ["x"] * 9
    for _ in range(9):
        bomb = [bomb] * 9  # 9**10 strings if printed in full
    message = str(ConfigError("f", bomb, "a list of names"))
    assert len(message) < MAX_VALUE_REPR + 100 and message.startswith("f=[[[")
    assert str(ConfigError("f", "y" * 10_000, "s")).count("y") < MAX_VALUE_REPR


def test_non_utf8_config_is_one_config_error(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"name: t\xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.field == "config" and "0xff at line 1" in str(info.value)


# -- the method section in one pass; `rankwise config show` (issue 11 item 2) -----------------------
def test_method_section_is_built_once_and_the_preset_left_to_the_engine():
    from rankwise.adapters import CoDyRAConfig

    cfg = config_from_dict({**base(), "method": {"name": "codyra", "r": 4, "k_max": "5e-3"}})
    assert isinstance(cfg.method.config, CoDyRAConfig)  # built here, not by a probe or a later call
    assert cfg.method.config.k_max == 0.005 and cfg.method.config.preset is None
    filled = cfg.method.config.with_default_preset("toy")
    assert filled.preset == "toy" and filled.k_max == 0.005 and cfg.method.config.preset is None
    own = config_from_dict({**base(), "method": {"name": "codyra", "preset": "bert"}}).method.config
    assert own.with_default_preset("toy") is own  # a preset the user gave wins
    with pytest.raises(ConfigError, match=r"method\.preset='nope'"):
        config_from_dict({**base(), "method": {"name": "lora", "preset": "nope"}})
    with pytest.raises(ConfigError, match=r"method\.rank=.*a known key: .*'r'"):
        config_from_dict({**base(), "method": {"name": "lora", "rank": 4}})


def test_engine_fills_the_backbone_preset_on_its_own_copy():
    from rankwise.engine.build import build_base

    cfg = config_from_dict({**base(), "method": {"name": "moram", "r": 2}})
    parts = build_base(cfg)
    assert parts.config.method.config.preset == "toy" and parts.config.method.config.tau == 0.01
    assert cfg.method.config.preset is None  # the caller's config is unchanged


def test_no_function_level_import_of_the_package_root():
    import ast

    for path in (REPO / "src" / "rankwise").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import):
                        assert "rankwise" not in [a.name for a in inner.names], f"{path}:{inner.lineno}"


def test_config_show_lists_every_field_of_every_section(capsys):
    import dataclasses

    from rankwise.cli import main
    from rankwise.config import EvalConfig, OutputConfig, TrainConfig
    from rankwise.config_presets import resolve_config

    assert main(["config", "show", "toy_moram", "--set", "method.tau=0.05"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_key = {line.split()[0]: line for line in lines}
    tau = by_key["method.tau"]
    assert "float" in tau and "= 0.05" in tau and "(default 0.01)" in tau and "softmax temperature" in tau
    assert "bool" in by_key["train.bf16"] and "bfloat16 autocast" in by_key["train.bf16"]
    assert "'moram'" in by_key["method.name"] and "'codyra'" in by_key["method.name"]
    cfg = load_config(resolve_config("toy_moram"))
    expected = ["name", "seed", "device", "threads", "method.name", "backbone.name", "scenario.name"]
    for section, obj in (("method", cfg.method.config), ("backbone", cfg.backbone.config),
                         ("scenario", cfg.scenario.config), ("train", TrainConfig()), ("eval", EvalConfig()),
                         ("output", OutputConfig())):  # fmt: skip
        expected += [f"{section}.{f.name}" for f in dataclasses.fields(obj) if f.init]
    assert sorted(by_key) == sorted(expected) and len(lines) == len(expected)
    assert all(" # " in by_key[k] for k in expected if k.startswith(("method.", "train.", "backbone.")))


def test_train_parallel_is_ddp_or_fsdp_and_fsdp_is_not_compiled():
    data = base()
    assert config_from_dict(data).train.parallel == "ddp"
    data["train"] = {"parallel": "fsdp"}
    assert config_from_dict(data).train.parallel == "fsdp"
    data["train"] = {"parallel": "zero3"}
    with pytest.raises(ConfigError, match=r"train.parallel='zero3'.*ddp.*fsdp"):
        config_from_dict(data)
    data["train"] = {"parallel": "fsdp", "compile": True}
    with pytest.raises(ConfigError, match=r"train.compile=True.*false with train.parallel: fsdp"):
        config_from_dict(data)


def test_fsdp_over_a_quantized_base_is_refused_before_anything_loads():
    from rankwise.engine.build import build_base

    data = {"name": "q", "method": {"name": "lora"}, "backbone": {"name": "causal-lm", "path": "/nowhere",
            "quantize": "nf4"}, "scenario": {"name": "trace", "root": ".", "tasks": ["a"]}, "train": {"parallel": "fsdp"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"train.parallel='fsdp'.*ddp with a quantized base \(backbone.quantize: nf4\)"):
        build_base(config_from_dict(data))
