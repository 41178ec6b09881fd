"""``train.compile``: a compiled run equals an eager one; checkpoints keep the eager names; resume is exact.

The runs here use the ``aot_eager`` backend (Dynamo graphs + AOTAutograd, no code generation) to stay
fast; tests/adapters/test_compile.py runs inductor itself on the MoRAM layer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_helpers import toy_config

from rankwise import io
from rankwise.config import config_from_dict
from rankwise.engine import checkpoint as ckpt
from rankwise.engine import compiled
from rankwise.engine.continual import run_experiment
from rankwise.errors import ConfigError


def _config(method: str, compile: bool):
    config = toy_config(method, iterations=4, checkpoint_every=2, log_every=2, compile=compile)
    config.scenario.config.num_tasks = 2
    return config


def _adapter_tensors(run_dir) -> dict[str, torch.Tensor]:
    """Every tensor of every task checkpoint, keyed by checkpoint folder and tensor name."""
    out = {}
    for folder in sorted((run_dir / "checkpoints").iterdir()):
        for path in sorted(folder.glob("*.safetensors")):
            for key, value in io.load_tensors(path).items():
                out[f"{folder.name}/{path.name}/{key}"] = value
    return out


@pytest.fixture(autouse=True)
def _fast_backend(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("method", ["moram", "lora"])
def test_compiled_run_equals_eager_run(tmp_path, method):
    eager = run_experiment(_config(method, False), tmp_path / "eager", quiet=True)
    calls = []
    original = compiled.compile_model
    with pytest.MonkeyPatch.context() as patch:  # count the per-task compiles
        patch.setattr(
            "rankwise.engine.continual.compile_model", lambda m: calls.append(original(m)) or calls[-1]
        )
        done = run_experiment(_config(method, True), tmp_path / "compiled", quiet=True)
    assert len(calls) == 2  # once per task, after begin_task
    assert all(c == calls[0] and c and all(".blocks." in n for n in c) for c in calls), calls
    np.testing.assert_allclose(done.accuracy_matrix, eager.accuracy_matrix, rtol=0, atol=1e-5)
    want, got = _adapter_tensors(eager.run_dir), _adapter_tensors(done.run_dir)
    assert sorted(got) == sorted(want) and want  # same checkpoint files and tensor names
    assert not [k for k in got if "_orig_mod" in k]
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_compile_regions_are_the_repeated_blocks_and_loose_adapters():
    from torch import nn

    from rankwise import LoRAConfig, get_model

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2)])
            self.norms = nn.ModuleList([nn.LayerNorm(4)])  # no linear layer: not a region
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(self.norms[0](x))

    net = Net()
    model = get_model(net, LoRAConfig(r=2, target_modules=["0", "head"]))
    model.begin_task("t")
    assert compiled.compile_regions(net) == ["blocks.0", "blocks.1", "head"]
    x = torch.randn(3, 4)
    want, keys = net(x), list(net.state_dict())
    assert compiled.compile_model(net) == ["blocks.0", "blocks.1", "head"]
    assert list(net.state_dict()) == keys  # compiled in place: no `_orig_mod.` in any name
    torch.testing.assert_close(net(x), want, rtol=1e-6, atol=1e-6)


def test_compiled_run_resumes_exactly(tmp_path, monkeypatch):
    reference = run_experiment(_config("moram", True), tmp_path / "ref", quiet=True)
    calls = [0]
    original = ckpt.write_state

    def crash(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # task 1's iteration-2 snapshot committed, then a kill
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(ckpt, "write_state", crash)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_config("moram", True), tmp_path / "run", quiet=True)
    monkeypatch.setattr(ckpt, "write_state", original)
    result = run_experiment(_config("moram", True), tmp_path / "run", resume=True, quiet=True)
    np.testing.assert_array_equal(result.accuracy_matrix, reference.accuracy_matrix)


def test_compile_must_be_a_bool():
    data = {"name": "c", "backbone": {"name": "toy"}, "method": {"name": "lora"}, "scenario": {"name": "synthetic"},
            "train": {"compile": "yes"}}  # fmt: skip
    with pytest.raises(ConfigError, match="train.compile"):
        config_from_dict(data)
