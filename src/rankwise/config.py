"""The run config: typed sections, YAML in and out, ``--set a.b=value`` overrides, clear errors.

A run config has ``name``, ``seed``, ``device``, ``threads`` and the sections ``method`` (``name`` plus fields of
the adapter config), ``backbone`` and ``scenario`` (``name`` plus fields of the registry entry's
config dataclass), ``train``, ``eval`` and ``output``. Every key is checked: an unknown key, a
wrong type or an impossible value raises `ConfigError` naming the key path (``train.lr``) and
what would be valid. ``data`` is an alias of ``scenario`` (``--set data.root=DIR`` sets
``scenario.root``). `RunConfig.to_dict` gives the fully resolved config (every default filled in).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rankwise import registry
from rankwise.adapters.methods import get_method, method_names
from rankwise.config_types import build_dataclass, check_size, coerce, coerce_fields, plain, type_name
from rankwise.errors import ConfigError, choices

__all__ = [
    "ADAPTER_METHODS", "METHODS", "Component", "EvalConfig", "OutputConfig", "RunConfig", "TrainConfig",  # noqa: F822 (module __getattr__)
    "RUN_KINDS", "apply_override", "build_dataclass", "coerce", "config_from_dict", "fold_aliases",
    "load_config", "read_yaml",
]  # fmt: skip

#: ``method.name`` values that attach no adapter: evaluate only, or train every weight
RUN_KINDS = ("zero-shot", "full")


def __getattr__(name: str) -> Any:
    """``METHODS`` (every ``method.name``) and ``ADAPTER_METHODS`` (the adapter ones), read from the
    method table (adapters/methods.py) at each use, so a method registered later is included."""
    if name == "ADAPTER_METHODS":
        return method_names()
    if name == "METHODS":
        return RUN_KINDS + method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_workers(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise ConfigError(name, value, "an integer in [0, 64] (0 = make batches in the main process)")


@dataclass
class TrainConfig:
    """How each task is trained (the same settings for every task)."""

    iterations: int = field(default=500, metadata={"help": "optimizer steps per task"})
    batch_size: int = field(default=64, metadata={"help": "examples per micro-batch"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | adam"})
    lr: float = field(default=5.0e-4, metadata={"help": "peak learning rate"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "Adam betas"})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled (adamw) or L2 (adam) decay"})
    schedule: str = field(default="cosine", metadata={"help": "cosine | constant (after warmup)"})
    warmup_iterations: int = field(default=0, metadata={"help": "linear warmup steps"})
    grad_clip: float | None = field(default=None, metadata={"help": "max global grad norm or null"})
    grad_accumulation: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast for forward passes"})
    log_every: int = field(default=10, metadata={"help": "optimizer steps between logged events"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between resumable snapshots"})
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the model's repeated blocks (from the first task on, recompiled per task)"},
    )
    data_workers: int = field(
        default=0,
        metadata={
            "help": "processes that read, decode and collate training batches ahead of the step (engine/loader.py); "
            "0 = in the training process"
        },
    )
    parallel: str = field(
        default="ddp",
        metadata={
            "help": "data parallelism under several processes: ddp (every rank holds the model) | fsdp "
            "(FSDP2: weights, gradients and optimizer state sharded while a task trains)"
        },
    )

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "grad_accumulation", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", getattr(self, name), "an integer >= 1")
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError("train.optimizer", self.optimizer, choices(["adamw", "adam"]))
        _check_workers(self.data_workers, "train.data_workers")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError("train.parallel", self.parallel, choices(["ddp", "fsdp"]))
        if self.parallel == "fsdp" and self.compile:
            raise ConfigError(
                "train.compile", self.compile, "false with train.parallel: fsdp (not combined yet; use ddp to compile)"
            )
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError("train.schedule", self.schedule, choices(["cosine", "constant"]))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("train.lr", self.lr, "a positive finite number")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("train.betas", self.betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("train.weight_decay", self.weight_decay, "a finite number >= 0")
        if not 0 <= self.warmup_iterations < self.iterations:
            raise ConfigError(
                "train.warmup_iterations",
                self.warmup_iterations,
                f"an integer in [0, train.iterations={self.iterations})",
            )
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ConfigError("train.grad_clip", self.grad_clip, "a positive number or null")


@dataclass
class EvalConfig:
    """How every task is evaluated after each task."""

    batch_size: int = field(default=128, metadata={"help": "examples per evaluation batch"})
    item_scores: bool = field(
        default=False,
        metadata={"help": "write each row's per-item scores to item_scores/ (for paired tests, report_compare)"},
    )

    data_workers: int = field(
        default=0,
        metadata={"help": "processes that read, decode and collate evaluation batches ahead; 0 = in this process"},
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size", self.batch_size, "an integer >= 1")
        _check_workers(self.data_workers, "eval.data_workers")
        if not isinstance(self.item_scores, bool):
            raise ConfigError("eval.item_scores", self.item_scores, "true or false")


@dataclass
class OutputConfig:
    """Where the run directory goes."""

    dir: str | None = field(default=None, metadata={"help": "run directory; null means runs/<name>"})
    loggers: list[str] = field(
        default_factory=list,
        metadata={"help": "experiment trackers fed from the events: csv, tensorboard, wandb, mlflow"},
    )

    def __post_init__(self) -> None:
        from rankwise.tracking import check_loggers

        check_loggers(self.loggers)


@dataclass
class Component:
    """A named, registry-resolved part (method / backbone / scenario) and its validated options.

    ``config`` is the built config object (adapter config, backbone or scenario dataclass);
    ``options`` are the keys given by the user, used to rebuild it.
    """

    name: str = field(metadata={"help": "the registered name (see `rankwise list`)"})
    options: dict[str, Any] = field(default_factory=dict)
    config: Any = None

    def resolved(self) -> dict[str, Any]:
        if self.config is None:
            return {"name": self.name, **self.options}
        data = self.config.to_dict() if hasattr(self.config, "to_dict") else dataclasses.asdict(self.config)
        data.pop("method", None)
        return {"name": self.name, **data}


@dataclass
class RunConfig:
    """A whole experiment: what to train, on what, how, and where to write it."""

    name: str = field(metadata={"help": "run name; the run directory is runs/<name> unless output.dir is set"})
    method: Component = field(metadata={"help": "adapter method (or zero-shot / full) and its options"})
    backbone: Component = field(metadata={"help": "pre-trained model and its options"})
    scenario: Component = field(metadata={"help": "task stream (alias: data) and its options"})
    seed: int = field(default=0, metadata={"help": "seed of every random draw (data order, init, dropout)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps"})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads; null: torch's default"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved config (every default written out), as plain YAML-able data."""
        return {
            "name": self.name,
            "seed": self.seed,
            "device": self.device,
            "threads": self.threads,
            "method": _plain(self.method.resolved()),
            "backbone": _plain(self.backbone.resolved()),
            "scenario": _plain(self.scenario.resolved()),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "output": dataclasses.asdict(self.output),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def run_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.name


# -- typed construction: one pass for every section (rankwise.config_types) ----------------------
_coerce = coerce  # older names, kept for callers and tests
_type_name = type_name
_plain = plain


def _component(section: str, data: Any, table: dict[str, registry.Entry] | None) -> Component:
    if not isinstance(data, dict) or "name" not in data:
        names = list(table) if table is not None else list(RUN_KINDS + method_names())
        raise ConfigError(
            f"{section}.name", None if not isinstance(data, dict) else data.get("name"), choices(names)
        )
    options = {k: v for k, v in data.items() if k != "name"}
    name = data["name"]
    valid = list(table) if table is not None else list(RUN_KINDS + method_names())
    if not isinstance(name, str):  # e.g. [toy]: a list is no name (and cannot be looked up)
        raise ConfigError(f"{section}.name", name, choices(valid))
    if table is None:
        return _method(name, options)
    entry = registry.lookup(table, name, f"{section}.name")
    try:
        cls = entry.load_config_class()
    except ImportError as exc:
        raise ConfigError(
            f"{section}.name", name, f"an installed component ({exc}); see `rankwise list`"
        ) from exc
    return _typed(name, cls, options, section)


def _typed(name: str, cls: type, options: dict[str, Any], section: str) -> Component:
    """The one typed construction of a named section (method, backbone, scenario): `build_dataclass`
    (keys checked, every field coerced from its annotation, errors named ``section.key``); the options
    kept are the coerced ones (``k_max: 5e-3``, a string to YAML, is 0.005 in both)."""
    config = build_dataclass(cls, options, section)
    return Component(name, coerce_fields(cls, options, section), config)


def _method(name: Any, options: dict[str, Any]) -> Component:
    """The method section: a run kind (no options), or the typed config of a registered method, built
    in the same pass as every other section. The target preset, when neither ``preset`` nor
    ``target_modules`` is given, is the backbone's: the engine fills it in when it builds the model."""
    if name not in RUN_KINDS + method_names():
        raise ConfigError("method.name", name, choices(RUN_KINDS + method_names()))
    if name in RUN_KINDS:
        if options:
            raise ConfigError(
                f"method.{next(iter(options))}",
                options[next(iter(options))],
                f"no other keys: method {name!r} takes only 'name'",
            )
        return Component(name, {}, None)
    return _typed(name, get_method(name, "method.name").config, options, "method")


TOP_LEVEL = ("name", "seed", "device", "threads", "method", "backbone", "scenario", "train", "eval", "output")
#: ``data`` is an alias of the ``scenario`` section (``data.root`` = ``scenario.root``), in YAML and ``--set``
ALIASES = {"data": "scenario"}


def _scenario_fields(data: dict[str, Any]) -> list[str] | None:
    """Option names of the scenario named in `data` (None when the name is missing or unknown)."""
    section = data.get("scenario")
    name = section.get("name") if isinstance(section, dict) else None
    if not isinstance(name, str) or name not in registry.SCENARIOS:
        return None
    try:
        cls = registry.SCENARIOS[name].load_config_class()
    except ImportError:
        return None
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _check_alias_key(data: dict[str, Any], key: str, value: Any) -> None:
    fields_ = _scenario_fields(data)
    if key != "name" and fields_ is not None and key not in fields_:
        raise ConfigError(
            f"data.{key}",
            value,
            f"a field of scenario {data['scenario']['name']!r} (data.* = scenario.*): {choices(fields_)}",
        )


def fold_aliases(data: dict[str, Any]) -> dict[str, Any]:
    """Merge a top-level ``data:`` section into ``scenario:`` (same key in both with different values: error)."""
    if "data" not in data:
        return data
    alias = data["data"]
    if not isinstance(alias, dict):
        raise ConfigError("data", alias, "a mapping of scenario fields (an alias of the scenario section)")
    data = dict(data)
    del data["data"]
    scenario = data.get("scenario")
    scenario = dict(scenario) if isinstance(scenario, dict) else {}
    for key, value in alias.items():
        if key in scenario and scenario[key] != value:
            raise ConfigError(
                f"data.{key}", value, f"the same value as scenario.{key}={scenario[key]!r} (both are set)"
            )
        scenario[key] = value
    data["scenario"] = scenario
    for key, value in alias.items():
        _check_alias_key(data, key, value)
    return data


def config_from_dict(data: Any) -> RunConfig:
    """Validate plain data (parsed YAML) into a RunConfig."""
    if not isinstance(data, dict):
        raise ConfigError("config", type(data).__name__, "a YAML mapping with keys " + choices(TOP_LEVEL))
    data = fold_aliases(data)
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(key, data[key], f"a known top-level key: {choices(TOP_LEVEL)}")
    for key in ("name", "method", "backbone", "scenario"):
        if key not in data:
            raise ConfigError(key, None, "a value (this key is required)")
    types_ = typing.get_type_hints(RunConfig)  # the top-level keys are typed by RunConfig's fields too
    name = _coerce(data["name"], types_["name"], "name")
    if not name or "/" in name:
        raise ConfigError("name", name, "a non-empty run name without '/'")
    seed = _coerce(data.get("seed", 0), types_["seed"], "seed")
    if not 0 <= seed < 2**63:  # torch, numpy and derived seeds need it to fit a signed 64-bit integer
        raise ConfigError("seed", seed, "an integer in [0, 2**63 - 1]")
    device = _coerce(data.get("device", "auto"), types_["device"], "device")
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ConfigError("device", device, "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    threads = _coerce(data.get("threads"), types_["threads"], "threads")
    if threads is not None and threads < 1:
        raise ConfigError("threads", threads, "a positive integer or null (torch's default)")
    return RunConfig(
        name=name,
        seed=seed,
        device=device,
        threads=threads,
        method=_component("method", data["method"], None),
        backbone=_component("backbone", data["backbone"], registry.BACKBONES),
        scenario=_component("scenario", data["scenario"], registry.SCENARIOS),
        train=build_dataclass(TrainConfig, data.get("train"), "train"),
        eval=build_dataclass(EvalConfig, data.get("eval"), "eval"),
        output=build_dataclass(OutputConfig, data.get("output"), "output"),
    )


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` in place; the value is parsed as YAML (``1e-4`` -> number, ``null``)."""
    if "=" not in override:
        raise ConfigError("--set", override, "KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    key, _, raw = override.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError("--set", override, "KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, raw, f"a YAML value ({exc.__class__.__name__})") from exc
    try:
        check_size(value, f"--set {key}")
    except ConfigError as exc:  # name the key being set, not a path inside its value
        raise ConfigError(key, exc.value, exc.expected) from exc
    if parts[0] in ALIASES and len(parts) > 1:
        if len(parts) == 2:
            _check_alias_key(data, parts[1], value)
        parts[0] = ALIASES[parts[0]]
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), child, "a section (mapping) to set keys in")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML config file: UTF-8, valid YAML, a mapping, at most `MAX_CONFIG_VALUES` values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "an existing YAML file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "config", str(path), f"a UTF-8 text file (byte 0x{raw[exc.start]:02x} at line {line} is not UTF-8)"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("config", str(path), f"valid YAML ({str(exc).splitlines()[0]})") from exc
    check_size(data, str(path))
    if not isinstance(data, dict):
        raise ConfigError(
            "config", str(path), "a YAML mapping at the top level, with keys " + choices(TOP_LEVEL)
        )
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides in order, validate everything."""
    data = fold_aliases(read_yaml(path))
    for override in overrides or []:
        apply_override(data, override)
    return config_from_dict(data)
