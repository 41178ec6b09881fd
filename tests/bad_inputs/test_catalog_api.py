"""Bad inputs through the Python API: every refusal is a RankwiseError naming the file and field, and
a refused `get_model` / `load_model` leaves the user's model exactly as it was.

"Exactly as it was" is checked four ways (`ModelState`): the state_dict (names, dtypes and values,
bit for bit), the module tree (type of every named module, so an nn.MultiheadAttention split into
q/k/v and left that way is caught), every parameter's requires_grad flag and identity, and the
forward output on a fixed input. After each refusal the matching adapter must still load into the
same model object and reproduce the outputs of a clean load. Files around each case are hashed
before and after (`tree_digest`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from bad_inputs.catalog import tree_digest
from rankwise import CoDyRAConfig, LoRAConfig, MoRAMConfig, export_peft, get_model, load_model
from rankwise.errors import CheckpointError, ConfigError, RankwiseError, TargetModulesError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TARGETS = ["q_proj", "v_proj", "out_proj", "0", "2"]
CONFIGS = {
    "lora": lambda: LoRAConfig(r=2, target_modules=TARGETS),
    "lora_merge": lambda: LoRAConfig(r=2, merge_on_task_end=True, target_modules=TARGETS),
    "codyra": lambda: CoDyRAConfig(r=3, target_modules=TARGETS),
    "moram": lambda: MoRAMConfig(r=2, tau=0.5, delta=-1.0, target_modules=TARGETS),
}


class Net(nn.Module):
    """Embedding, two fused attentions, an MLP and a head; one parameter frozen by the user."""

    def __init__(self, width: int = 8, seed: int = 0, bias_kv: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(5, width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(width, 2, batch_first=True, add_bias_kv=bias_kv)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, 3)
        self.head.bias.requires_grad_(False)  # the user's own choice must survive a failed call
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.cross(h, h, h, need_weights=False)[0]
        return self.head(h + self.mlp(h))


X = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))


@dataclass
class ModelState:
    state: dict[str, torch.Tensor]
    types: dict[str, str]
    grads: dict[str, bool]
    ids: dict[str, int]
    out: torch.Tensor

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        with torch.no_grad():
            out = model(X).clone()
        return cls(
            {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
            {n: type(m).__name__ for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: id(p) for n, p in model.named_parameters()},
            out,
        )

    def assert_same(self, model: nn.Module) -> None:
        after = ModelState.of(model)
        assert after.types == self.types, "module tree changed"
        assert after.grads == self.grads, "requires_grad flags changed"
        assert after.ids == self.ids, "parameters were replaced"
        assert list(after.state) == list(self.state), "state_dict names changed"
        for key, value in self.state.items():
            got = after.state[key]
            assert got.dtype == value.dtype and torch.equal(got, value), f"{key} changed"
        assert torch.equal(after.out, self.out), "forward output changed"


def _perturb(model) -> None:
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0.0, 0.3)


def save_adapter(directory: Path, method: str = "codyra", width: int = 8, tasks: int = 2) -> Path:
    """An adapter with `tasks` finished tasks (merged history for lora_merge / CoDyRA, a bank for MoRAM)."""
    torch.manual_seed(5)
    model = get_model(Net(width), CONFIGS[method]())
    for t in range(tasks):
        model.begin_task(f"t{t}")
        _perturb(model)
        model.end_task()
    model.save_pretrained(directory)
    return directory


def _clean_output(directory: Path, width: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return load_model(Net(width), directory)(X)


def _refused_and_untouched(call, model, error=CheckpointError, match=None, around: Path | None = None):
    """`call()` raises `error` (a RankwiseError, message matching `match`); model and files unchanged."""
    before = ModelState.of(model)
    files = tree_digest(around) if around is not None else None
    with pytest.raises(error, match=match) as info:
        call()
    assert isinstance(info.value, RankwiseError)
    assert "\n" not in str(info.value)
    before.assert_same(model)
    if around is not None:
        assert tree_digest(around) == files
    return str(info.value)


def _still_loads(model, directory: Path, width: int = 8) -> None:
    with torch.no_grad():
        assert torch.equal(load_model(model, directory)(X), _clean_output(directory, width))


# -- a failed get_model / load_model leaves the model as it was -----------------------------------
@pytest.mark.parametrize("method", list(CONFIGS))
def test_adapter_from_a_model_of_another_width(tmp_path, method):
    narrow = save_adapter(tmp_path / "narrow", method, width=8)
    wide = save_adapter(tmp_path / "wide", method, width=12)
    model = Net(12)
    message = _refused_and_untouched(lambda: load_model(model, narrow), model, around=tmp_path)
    assert WEIGHTS_FILE in message and "shape" in message
    assert "(12" in message or ", 12)" in message  # the shape this model needs
    _still_loads(model, wide, width=12)


def test_adapter_saved_from_a_model_with_other_layers(tmp_path):
    good = save_adapter(tmp_path / "good")
    shallow = tmp_path / "shallow"
    torch.manual_seed(0)
    other = get_model(nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 8)), CONFIGS["codyra"]())
    other.begin_task("a")
    other.end_task()
    other.save_pretrained(shallow)
    model = Net()
    message = _refused_and_untouched(lambda: load_model(model, shallow), model, match="does not fit")
    assert str(shallow) in message
    _still_loads(model, good)


def test_config_that_matches_nothing(tmp_path):
    good = save_adapter(tmp_path / "good")
    model = Net()
    _refused_and_untouched(
        lambda: get_model(model, LoRAConfig(target_modules=["no_such_layer"])), model, TargetModulesError
    )
    _still_loads(model, good)


def test_attention_that_cannot_be_split_after_one_that_was(tmp_path):
    """`attn` splits fine, `cross` (add_bias_kv) cannot: the first split must be undone too."""
    model = Net(bias_kv=True)
    message = _refused_and_untouched(
        lambda: get_model(model, LoRAConfig(target_modules=["q_proj"])), model, ConfigError
    )
    assert "cross" in message and "exclude_modules" in message
    wrapped = get_model(model, LoRAConfig(target_modules=["q_proj"], exclude_modules=["cross.q_proj"]))
    assert sorted(wrapped.adapter_layers()) == ["attn.q_proj"]


def test_model_that_already_has_adapters_is_refused_before_any_change(tmp_path):
    wrapped = get_model(Net(), LoRAConfig(target_modules=["0"]))
    base = wrapped.base_model
    _refused_and_untouched(
        lambda: get_model(base, LoRAConfig(target_modules=["q_proj"])), base, ConfigError, "already"
    )


def _edit_json(directory: Path, edit) -> Path:
    path = directory / CONFIG_FILE
    data = json.loads(path.read_text())
    data = edit(data)
    path.write_text(json.dumps(data))
    (directory / "checksums.json").unlink(missing_ok=True)  # a hand-edited folder, not a flipped bit
    return directory


def _set_layer(field, value, layer="mlp.2"):
    def edit(data):
        data["layers"][layer][field] = value
        return data

    return edit


def _drop_layer_field(field, layer="mlp.2"):
    def edit(data):
        del data["layers"][layer][field]
        return data

    return edit


def _set(field, value):
    def edit(data):
        data[field] = value
        return data

    return edit


def _drop(field):
    def edit(data):
        del data[field]
        return data

    return edit


MALFORMED = {
    "top_level_array": (lambda data: [data], "JSON object"),
    "no_layers": (_drop("layers"), "layers"),
    "layers_array": (_set("layers", [1, 2]), "layers"),
    "layer_meta_array": (lambda data: {**data, "layers": {**data["layers"], "mlp.2": [0]}}, "mlp.2"),
    "merged_tasks_text": (_set_layer("merged_tasks", "two"), "merged_tasks"),
    "merged_tasks_negative": (_set_layer("merged_tasks", -1), "merged_tasks"),
    "merged_tasks_beyond_tensors": (_set_layer("merged_tasks", 7), "merged.2.A"),
    "no_task_active": (_drop_layer_field("task_active"), "task_active"),
    "task_active_text": (_set_layer("task_active", "yes"), "task_active"),
    "merged_ranks_null": (_set_layer("merged_ranks", None), "merged_ranks"),
    "tasks_text": (_set("tasks", "t0"), "tasks"),
    "current_task_number": (_set("current_task", 5), "current_task"),
    "config_array": (_set("config", []), "config"),
    "config_bad_rank": (lambda data: {**data, "config": {**data["config"], "r": "three"}}, "r"),
    "config_unknown_method": (lambda data: {**data, "config": {**data["config"], "method": "dora"}}, "method"),
    "format_version": (_set("format_version", 99), "format_version"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_adapter_config(tmp_path, case):
    edit, field = MALFORMED[case]
    good = save_adapter(tmp_path / "good")
    bad = _edit_json(save_adapter(tmp_path / "bad"), edit)
    model = Net()
    message = _refused_and_untouched(lambda: load_model(model, bad), model, around=tmp_path)
    assert field in message
    assert CONFIG_FILE in message or WEIGHTS_FILE in message
    _still_loads(model, good)


def test_moram_bank_metadata_that_disagrees_with_the_bank(tmp_path):
    good = save_adapter(tmp_path / "good", "moram")
    bad = _edit_json(save_adapter(tmp_path / "bad", "moram"), _set_layer("task_sizes", [2, 2, 2]))
    model = Net()
    message = _refused_and_untouched(lambda: load_model(model, bad), model)
    assert "task_sizes" in message and "bank_A" in message
    _still_loads(model, good)


# -- corrupted tensors ---------------------------------------------------------------------------
def _flip_bit(path: Path, from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - from_end] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("from_end", [1, 3, 200])
def test_flipped_bit_is_caught_by_the_checksums(tmp_path, from_end):
    directory = save_adapter(tmp_path / "adapter")
    assert (directory / "checksums.json").is_file()
    _flip_bit(directory / WEIGHTS_FILE, from_end)
    model = Net()
    message = _refused_and_untouched(lambda: load_model(model, directory), model, around=tmp_path)
    assert WEIGHTS_FILE in message and "checksums.json" in message
    _flip_bit(directory / WEIGHTS_FILE, from_end)  # flipped back: loads again
    _still_loads(model, directory)


def test_non_finite_tensor_without_checksums_is_refused(tmp_path):
    """An older folder (no checksums.json) whose tensor holds a NaN: refused, naming the tensor."""
    directory = save_adapter(tmp_path / "adapter")
    (directory / "checksums.json").unlink(missing_ok=True)
    tensors = load_file(directory / WEIGHTS_FILE)
    key = sorted(tensors)[0]
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "rankwise-adapter"})
    model = Net()
    message = _refused_and_untouched(lambda: load_model(model, directory), model, around=tmp_path)
    assert key in message and "non-finite" in message


def test_checksums_file_that_is_malformed_or_lists_another_file(tmp_path):
    directory = save_adapter(tmp_path / "adapter")
    sums = directory / "checksums.json"
    original = sums.read_text()
    model = Net()
    for text, needle in (("[1, 2]", "checksums.json"), ('{"adapter_config.json": 5}', CONFIG_FILE),
                         ("{}", WEIGHTS_FILE), ("{nope", "checksums.json")):  # fmt: skip
        sums.write_text(text)
        message = _refused_and_untouched(lambda: load_model(model, directory), model)
        assert needle in message and "checksums.json" in message, message
    sums.write_text(original)
    _still_loads(model, directory)


def test_integer_tensor_where_factors_belong(tmp_path):
    directory = save_adapter(tmp_path / "adapter")
    (directory / "checksums.json").unlink(missing_ok=True)
    tensors = load_file(directory / WEIGHTS_FILE)
    tensors["mlp.0::merged.0.A"] = tensors["mlp.0::merged.0.A"].to(torch.int32)
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "rankwise-adapter"})
    model = Net()
    message = _refused_and_untouched(lambda: load_model(model, directory), model)
    assert "mlp.0::merged.0.A" in message and "int32" in message


# -- save_pretrained onto something that is not a directory ----------------------------------------
def test_save_pretrained_onto_a_file(tmp_path):
    model = get_model(Net(), CONFIGS["codyra"]())
    (tmp_path / "notes.txt").write_text("the user's own file")
    before = tree_digest(tmp_path)
    plain = get_model(nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 8)), CoDyRAConfig(r=3, target_modules=["0"]))
    plain.begin_task("a")
    _perturb(plain)
    plain.end_task()
    for save in (model.save_pretrained, lambda target: export_peft(plain, target)):
        for target in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "adapter"):
            with pytest.raises(CheckpointError, match="notes.txt") as info:
                save(target)
            assert "\n" not in str(info.value)
            assert tree_digest(tmp_path) == before


# -- eval of a run whose backbone was edited afterwards ---------------------------------------------
def _toy_run(method: str) -> dict:
    """One task of two steps on the toy backbone (dim 32, MLP 64): the smallest run that saves a checkpoint."""
    return {
        "name": f"edited_{method}",
        "seed": 0,
        "device": "cpu",
        "method": {"name": method, **({"r": 8} if method != "full" else {})},
        "backbone": {"name": "toy"},
        "scenario": {"name": "synthetic", "num_tasks": 1, "train_per_class": 2, "test_per_class": 1},
        "train": {"iterations": 2, "batch_size": 4, "lr": 1e-2, "log_every": 1, "checkpoint_every": 2},
    }


def test_eval_after_the_backbone_was_edited_names_tensor_and_shapes(tmp_path):
    from rankwise.config import config_from_dict
    from rankwise.engine.continual import evaluate_run, run_experiment

    data = _toy_run("lora")
    result = run_experiment(config_from_dict(data), tmp_path / "run", quiet=True)
    config_path = result.run_dir / "config.yaml"
    saved = yaml.safe_load(config_path.read_text())
    saved["backbone"]["dim"] = 48
    config_path.write_text(yaml.safe_dump(saved))
    before = tree_digest(result.run_dir)
    with pytest.raises(CheckpointError) as info:
        evaluate_run(result.run_dir)
    message = str(info.value)
    assert "\n" not in message and "lora_A" in message
    assert "(8, 32)" in message and "(8, 48)" in message, message
    assert tree_digest(result.run_dir) == before


def test_full_fine_tuning_eval_after_the_backbone_was_edited(tmp_path):
    from rankwise.config import config_from_dict
    from rankwise.engine.continual import evaluate_run, run_experiment

    data = _toy_run("full")
    result = run_experiment(config_from_dict(data), tmp_path / "run", quiet=True)
    config_path = result.run_dir / "config.yaml"
    saved = yaml.safe_load(config_path.read_text())
    saved["backbone"]["mlp_ratio"] = 3
    config_path.write_text(yaml.safe_dump(saved))
    with pytest.raises(CheckpointError) as info:
        evaluate_run(result.run_dir)
    message = str(info.value)
    assert "fc1.weight" in message and "(64, 32)" in message and "(96, 32)" in message, message


def test_deepcopy_of_a_model_is_what_a_refusal_compares_against():
    """Guard of the checker itself: a change of one bit, one flag or one module type is detected."""
    model = Net()
    before = ModelState.of(model)
    for change in (
        lambda m: m.mlp[0].weight.data.view(-1)[0].add_(1e-3),
        lambda m: m.head.weight.requires_grad_(False),
        lambda m: setattr(m, "embed", copy.deepcopy(m.embed)),
    ):
        other = copy.deepcopy(model)
        before_other = ModelState.of(other)
        change(other)
        with pytest.raises(AssertionError):
            before_other.assert_same(other)
    before.assert_same(model)
