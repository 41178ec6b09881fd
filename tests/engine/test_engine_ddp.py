"""Two CPU processes (torchrun + gloo) reproduce one process with the same global batch, resume after a
kill of rank 0, and only rank 0 writes the run directory.

Tolerance: each accuracy cell may differ by at most one test example (100/32 points here) and each
logged loss by 1e-4 relative. It is not zero because two processes average ``(g_0 + g_1) / 2``
while one process sums all 16 examples in one pass: the same gradient in exact arithmetic, a
different floating-point summation order, which Adam can carry into a flipped near-tie argmax.
(Measured: identical matrices.) The toy loss is made a per-example mean for this test; see
ddp_entry.py for why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from toy_helpers import REPO, toy_dict

from rankwise.config import config_from_dict
from rankwise.engine import distributed as ddp
from rankwise.engine.continual import run_experiment

ENTRY = REPO / "tests" / "engine" / "ddp_entry.py"
ONE_EXAMPLE = 100.0 / 32  # 4 classes x 8 test examples per task


def _data(parallel: str = "ddp") -> dict:
    data = toy_dict("codyra", iterations=12, checkpoint_every=4, log_every=2)
    data["train"]["parallel"] = parallel
    return data


def _torchrun(tmp_path, run_dir, *extra, kill_at=None):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO / "src"),
        RANKWISE_TEST_PER_EXAMPLE_LOSS="1",
        RANKWISE_TEST_AUDIT=str(tmp_path),
    )
    for key in ("RANKWISE_TEST_KILL_AT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    if kill_at is not None:
        env["RANKWISE_TEST_KILL_AT"] = str(kill_at)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ENTRY), "run", str(tmp_path / "config.yaml"), "--quiet", "--threads", "1", *extra,
    ]  # fmt: skip
    if "--resume" not in extra:
        cmd += ["--set", f"output.dir={run_dir}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _audits(tmp_path) -> list:
    """The writes rank 1 made (ddp_entry.py appends each one as it happens, so a SIGTERM loses none)."""
    path = tmp_path / "audit.rank1.jsonl"
    assert path.is_file(), "rank 1 did not run with the write audit"
    writes = [json.loads(line) for line in path.read_text().splitlines()]
    path.unlink()
    return writes


def _steps(run_dir) -> list[tuple[int, int, float]]:
    events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
    return [(e["task"], e["iteration"], e["loss"]) for e in events if e["event"] == "step"]


@pytest.mark.parametrize("parallel", ["ddp"])  # FSDP: tests/backbones/test_causal_lm_distributed.py
def test_two_processes_killed_and_resumed_match_one_process(parallel, tmp_path, monkeypatch):
    import torch.nn.functional as F

    from rankwise.backbones.toy import ToyBackbone

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_data(parallel)))
    run_dir = tmp_path / "ddp"
    # rank 0 dies at its 6th write_state: task 2's iteration-8 snapshot is written, not committed
    killed = _torchrun(tmp_path, run_dir, kill_at=6)
    assert killed.returncode != 0
    state = json.loads((run_dir / "state" / "state.json").read_text())
    assert (state["task_index"], state["iteration"], state["finished"]) == (1, 4, False)
    assert _audits(tmp_path) == []  # rank 1 wrote nothing
    resumed = _torchrun(tmp_path, run_dir, "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _audits(tmp_path) == []
    assert resumed.stdout.count("run dir:") == 1  # rank 0 reports, rank 1 stays silent

    # the same global batch in one process, uninterrupted
    def per_example_loss(self, batch, task):
        logits = self.model(batch["tokens"], batch["class_tokens"]).float()
        return F.cross_entropy(logits, batch["labels"])

    monkeypatch.setattr(ToyBackbone, "loss", per_example_loss)
    one = run_experiment(config_from_dict(_data()), tmp_path / "one", quiet=True)
    two = np.asarray(json.loads((run_dir / "accuracy_matrix.json").read_text())["matrix"])
    print("1 process:\n", one.accuracy_matrix, "\n2 processes (killed + resumed):\n", two)
    assert two.shape == one.accuracy_matrix.shape == (4, 3)
    assert np.abs(two - one.accuracy_matrix).max() <= ONE_EXAMPLE + 1e-9
    assert np.diag(two[1:]).mean() > two[0].mean() + 25  # it learned (chance is 25%)
    s1, s2 = _steps(one.run_dir), _steps(run_dir)
    assert [s[:2] for s in s2] == [s[:2] for s in s1] and len(s1) == 18
    np.testing.assert_allclose([s[2] for s in s2], [s[2] for s in s1], rtol=1e-4)
    assert json.loads((run_dir / "tasks.json").read_text()) == json.loads(
        (one.run_dir / "tasks.json").read_text()
    )


def test_bad_global_batch_and_environment_are_clear_errors(monkeypatch):
    with pytest.raises(Exception, match=r"train.batch_size=15.*multiple of the number of processes \(2\)"):
        ddp.check_batch(15, ddp.DistContext(2, 0, 0))
    ddp.check_batch(16, ddp.DistContext(2, 1, 1))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(Exception, match="RANK < WORLD_SIZE"):
        ddp.detect()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(Exception, match="RANK='one'"):
        ddp.detect()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert ddp.detect() == ddp.DistContext(2, 1, 1)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert not ddp.detect().enabled and ddp.detect().is_main


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_partition_the_global_batch(world):
    batch = list(range(12))
    shards = [ddp.shard(batch, ddp.DistContext(world, r, r)) for r in range(world)]
    assert [i for s in shards for i in s] == batch  # disjoint, in order, nothing lost
    assert {len(s) for s in shards} == {12 // world}
    assert ddp.shard(batch, ddp.SINGLE) is batch


def test_out_of_sync_ranks_are_detected(monkeypatch):
    model = torch.nn.Linear(3, 2)
    ctx = ddp.DistContext(2, 0, 0)
    same = ddp.model_checksum(model)
    monkeypatch.setattr(ddp, "gather_objects", lambda obj, ctx: [obj, list(same)])
    ddp.check_in_sync(model, ctx, "after task 1")  # equal checksums: fine
    with torch.no_grad():
        model.weight[0, 0] += 1e-6  # one weight on this rank drifts
    assert ddp.model_checksum(model) != same
    with pytest.raises(ddp.OutOfSyncError, match="after task 1"):
        ddp.check_in_sync(model, ctx, "after task 1")
    with torch.no_grad():  # a swap of two weights changes the position-weighted sum
        model.weight[0, 0] -= 1e-6
        a = model.weight[0, 0].item()
        model.weight[0, 0] = model.bias[0].item()
        model.bias[0] = a
    assert ddp.model_checksum(model) != same


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_sum_moram_activation_counts_over_ranks(parallel, tmp_path, monkeypatch):
    """Evaluation is sharded, so each rank counts the atoms routed on its own slice of every test set;
    the task_end rank report must hold the counts over all test tokens, as one process sees them."""
    import torch.nn.functional as F

    from rankwise.backbones.toy import ToyBackbone

    data = toy_dict("moram", iterations=2, checkpoint_every=2, log_every=1)
    data["train"]["parallel"] = parallel
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    two = _torchrun(tmp_path, tmp_path / "ddp")
    assert two.returncode == 0, two.stderr[-3000:]

    def per_example_loss(self, batch, task):  # the objective the two processes train (ddp_entry.py)
        logits = self.model(batch["tokens"], batch["class_tokens"]).float()
        return F.cross_entropy(logits, batch["labels"])

    monkeypatch.setattr(ToyBackbone, "loss", per_example_loss)
    one = run_experiment(config_from_dict(data), tmp_path / "one", quiet=True)

    def reports(run_dir):
        events = map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
        return [e["rank_report"] for e in events if e["event"] == "task_end"]

    pairs = list(zip(reports(tmp_path / "ddp"), reports(one.run_dir)))
    assert len(pairs) == 3
    gaps = []
    for two_layers, one_layers in pairs:
        assert len(two_layers) == len(one_layers) == 12
        for a, b in zip(two_layers, one_layers):
            assert a["layer"] == b["layer"]
            if a["layer"].startswith("input_tower."):  # inputs sharded over the ranks
                assert a["tokens_seen"] == b["tokens_seen"] > 0  # both shards counted (one alone: half)
            gaps += [abs(x - y) for x, y in zip(a["activation_rate_per_task"], b["activation_rate_per_task"])]
    # nearly the same weights (summation order only): nearly the same routing rates. With tau = 0.01 a
    # near tie can flip a few of a text layer's 144 tokens (1/144 = 0.007 each), so: almost every rate
    # equal, none off by more than a handful of tokens
    assert len(gaps) == 72 and sum(gaps) / len(gaps) < 0.005 and max(gaps) < 0.05


@pytest.mark.parametrize(
    ("method", "parallel"),
    [("olora", "ddp"), ("inflora", "ddp"), ("moe-lora", "ddp"), ("inflora", "fsdp"), ("moe-lora", "fsdp")],
)  # O-LoRA under FSDP is refused (test below)
def test_two_processes_train_the_rival_methods_as_one_process(method, parallel, tmp_path, monkeypatch):
    """O-LoRA (extra loss), InfLoRA (task-input pass, B only) and MoE-LoRA (router rows, experts) under
    two processes: the gradient averaging covers every trainable tensor they create, and InfLoRA's
    collection pass designs the same A on every rank. If a tensor were left out of the averaging,
    rank 0 would train on its half batch only and its adapters would differ from one process's by far
    more than the summation-order tolerance (same reasoning as the module docstring)."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from rankwise.backbones.toy import ToyBackbone

    data = toy_dict(method, iterations=6, checkpoint_every=6, log_every=2)
    data["train"]["parallel"] = parallel
    # no dropout: masks are drawn per process from its shard, so they differ from one process's draw
    # by design (O-LoRA's official default is 0.1)
    data["method"]["lora_dropout"] = 0.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    two = _torchrun(tmp_path, tmp_path / "ddp")
    assert two.returncode == 0, two.stderr[-3000:]
    assert _audits(tmp_path) == []  # rank 1 wrote nothing

    def per_example_loss(self, batch, task):  # the objective the two processes train (ddp_entry.py)
        logits = self.model(batch["tokens"], batch["class_tokens"]).float()
        return F.cross_entropy(logits, batch["labels"])

    monkeypatch.setattr(ToyBackbone, "loss", per_example_loss)
    one = run_experiment(config_from_dict(data), tmp_path / "one", quiet=True)
    last = sorted((one.run_dir / "checkpoints").iterdir())[-1].name
    a = load_file(tmp_path / "ddp" / "checkpoints" / last / "adapter_model.safetensors")
    b = load_file(one.run_dir / "checkpoints" / last / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    moved = 0
    for key in a:
        # Adam divides by sqrt(v): an element whose gradient is ~0 can move by ~lr on a summation-order
        # difference, so allow a few such elements; a tensor left out of the averaging moves them all
        far = ~torch.isclose(a[key], b[key], rtol=1e-3, atol=1e-4)
        assert far.float().mean() <= 0.01, f"{key}: {int(far.sum())} of {far.numel()} elements differ"
        assert (a[key] - b[key]).norm() <= 1e-2 * b[key].norm() + 1e-6, key
        moved += int(not torch.equal(a[key], torch.zeros_like(a[key])))
    assert moved > 0  # trained tensors were compared, not only zeros
    two_matrix = np.asarray(json.loads((tmp_path / "ddp" / "accuracy_matrix.json").read_text())["matrix"])
    assert np.abs(two_matrix - one.accuracy_matrix).max() <= ONE_EXAMPLE + 1e-9
    s1, s2 = _steps(one.run_dir), _steps(tmp_path / "ddp")
    np.testing.assert_allclose([s[2] for s in s2], [s[2] for s in s1], rtol=1e-4)


def test_olora_under_fsdp_is_refused_before_any_work(tmp_path):
    data = toy_dict("olora", iterations=2, checkpoint_every=2, log_every=1)
    data["train"]["parallel"] = "fsdp"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    done = _torchrun(tmp_path, tmp_path / "fsdp")
    assert done.returncode != 0  # each rank exits 2 (a ConfigError); torchrun reports 1
    assert "train.parallel='fsdp'" in done.stderr and "ddp for method 'olora'" in done.stderr
    assert not (tmp_path / "fsdp" / "item_scores").exists()
    events = (tmp_path / "fsdp" / "events.jsonl")
    assert not events.exists() or "zero-shot" not in events.read_text()  # stopped before the first row


def test_task_ddp_is_pytorch_ddp_averaging_on_the_last_micro_batch_only(tmp_path):
    """`TaskDDP` under 2 gloo processes: DistributedDataParallel does the work; a no_sync micro-batch
    leaves the local gradient; the last one leaves the mean over ranks of the accumulated gradients,
    computed here by hand from each rank's own inputs; an unused trainable tensor keeps no gradient."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "engine" / "ddp_task_entry.py"), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert seen[0]["wrapped"] == "DistributedDataParallel"
    refusal = torch.load(tmp_path / "refusal0.pt", weights_only=True)
    assert "not the model's" in refusal and "trainable" in refusal

    # the reference: the same model and inputs in one process, gradients by autograd per rank
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    model[0].bias.requires_grad_(False)
    model.add_module("head", torch.nn.Linear(2, 2))
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = [torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(10 + r)) for r in range(2)]
    for it in range(2):
        local = []  # per rank: [grads after micro 0, accumulated grads after micro 1]
        for r in range(2):
            grads, total = [], [torch.zeros_like(p) for p in params[:3]]
            for micro in range(2):
                out = model[2](model[1](model[0](inputs[r][micro, it]))).pow(2).mean() / 2
                g = torch.autograd.grad(out, params[:3])
                total = [t + gi for t, gi in zip(total, g)]
                grads.append([t.clone() for t in total])
            local.append(grads)
        for r in range(2):
            got = seen[r][f"step{it}_micro0"]
            for want, have in zip(local[r][0], got):
                torch.testing.assert_close(have, want, rtol=1e-6, atol=1e-7)  # no_sync: this rank's own
            got = seen[r][f"step{it}_micro1"]
            for k in range(3):
                torch.testing.assert_close(got[k], (local[0][1][k] + local[1][1][k]) / 2, rtol=1e-6, atol=1e-7)
            assert got[3] is None and got[4] is None  # the unused head: no gradient, as in one process
        with torch.no_grad():
            for k, p in enumerate(params[:3]):
                p -= 0.1 * (local[0][1][k] + local[1][1][k]) / 2


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_fine_tune_the_whole_model_as_one_process(parallel, tmp_path, monkeypatch):
    """Full fine-tuning under DDP (every weight trainable, `find_unused_parameters` on): the saved
    weights after each task equal one process's up to the summation-order tolerance above."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from rankwise.backbones.toy import ToyBackbone

    data = toy_dict("full", iterations=6, checkpoint_every=6, log_every=2)
    data["train"]["lr"] = 1e-3
    data["train"]["parallel"] = parallel
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    two = _torchrun(tmp_path, tmp_path / "ddp")
    assert two.returncode == 0, two.stderr[-3000:]

    def per_example_loss(self, batch, task):
        logits = self.model(batch["tokens"], batch["class_tokens"]).float()
        return F.cross_entropy(logits, batch["labels"])

    monkeypatch.setattr(ToyBackbone, "loss", per_example_loss)
    one = run_experiment(config_from_dict(data), tmp_path / "one", quiet=True)
    for folder in sorted((one.run_dir / "checkpoints").iterdir()):
        a = load_file(tmp_path / "ddp" / "checkpoints" / folder.name / "model.safetensors")
        b = load_file(folder / "model.safetensors")
        assert a.keys() == b.keys() and len(a) > 0
        for key in a:
            if key.endswith("k_proj.bias"):
                # its gradient is exactly zero (a key bias shifts every score of a query alike, and
                # softmax ignores that), so Adam's g / sqrt(v) moves it by summation noise alone
                continue
            far = ~torch.isclose(a[key], b[key], rtol=1e-3, atol=1e-4)
            assert far.float().mean() <= 0.01, f"{folder.name}/{key}: {int(far.sum())} of {far.numel()} differ"
    s1, s2 = _steps(one.run_dir), _steps(tmp_path / "ddp")
    np.testing.assert_allclose([s[2] for s in s2], [s[2] for s in s1], rtol=1e-4)


def test_task_fsdp_shards_averages_releases_and_shards_again(tmp_path):
    """`TaskFSDP` under 2 gloo processes: while a task trains, each rank holds half of every weight
    (frozen base included); the parameters after every step equal plain gradient descent on the mean
    over ranks of the accumulated gradients, computed here in one process from each rank's inputs
    (the 0-d scale, which FSDP cannot shard, included); `release` leaves plain modules and parameters;
    a second task adds tensors and shards again."""
    import importlib.util

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    entry = REPO / "tests" / "engine" / "fsdp_task_entry.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(entry), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert seen[0]["units"] == ["blocks.0", "blocks.1"]
    assert seen[0]["local_factor"] == (3, 4) and seen[0]["local_base"] == (2, 4)  # half of each, per rank
    assert seen[0]["local_head"] == (1, 4)  # the root's own weights are sharded too
    assert seen[0]["plain"] and all(not c.startswith("FSDP") for c in seen[0]["classes"])

    spec = importlib.util.spec_from_file_location("fsdp_task_entry", entry)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.Model()
    inputs = [torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(10 + r)) for r in range(2)]
    want = []
    for it in range(3):
        if it == 2:
            for block in model.blocks:
                block.factor.requires_grad_(False)
                block.extra = torch.nn.Parameter(torch.full((4, 4), 0.05))
        params = [p for p in model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        for r in range(2):
            for micro in range(2):
                grads = torch.autograd.grad(model.loss(inputs[r][it, micro]) / 2, params)
                total = [t + g / 2 for t, g in zip(total, grads)]  # mean over the two ranks
        with torch.no_grad():
            for p, g in zip(params, total):
                p -= 0.1 * g
        want.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for r in range(2):
        assert len(seen[r]["steps"]) == 3
        for it in range(3):
            assert seen[r]["steps"][it].keys() == want[it].keys()
            for name, value in want[it].items():
                torch.testing.assert_close(seen[r]["steps"][it][name], value, rtol=1e-5, atol=1e-6)
        assert seen[r]["final"]["scale"].item() != 1.5  # the 0-d scale trained (and equally: above)


def test_accelerate_launch_runs_the_same_fsdp_run_as_torchrun(tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` (torch's elastic agent underneath; on a CPU
    machine the ranks use gloo) sets the variables torchrun sets: the same FSDP run, bit for bit.
    (``accelerate launch --cpu`` is not multi-process: it starts one process; docs/engine.md.)"""
    pytest.importorskip("accelerate")
    data = toy_dict("codyra", iterations=4, checkpoint_every=4, log_every=1)
    data["train"]["parallel"] = "fsdp"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    tail = ["-m", "rankwise.cli", "run", str(config), "--quiet", "--threads", "1", "--set"]
    launchers = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", "0"],
    }  # fmt: skip
    for name, launcher in launchers.items():
        done = subprocess.run(
            [*launcher, *tail, f"output.dir={tmp_path / name}"], env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert _steps(tmp_path / "accelerate") == _steps(tmp_path / "torchrun") and len(_steps(tmp_path / "torchrun")) == 12
    matrix = lambda name: (tmp_path / name / "accuracy_matrix.json").read_text()  # noqa: E731
    assert matrix("accelerate") == matrix("torchrun")
