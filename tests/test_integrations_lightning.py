"""rankwise inside Lightning (src/rankwise/integrations/lightning.py): two tasks on the toy dual
encoder with CoDyRA and a fully trained module (`modules_to_save`), the lifecycle, adapter-only
checkpoint contents, reload from a checkpoint, and the error paths."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from rankwise.adapters import CoDyRAConfig, get_model  # noqa: E402
from rankwise.backbones.toy import ToyBackbone, ToyBackboneConfig  # noqa: E402
from rankwise.errors import CheckpointError, LifecycleError  # noqa: E402
from rankwise.integrations.lightning import CHECKPOINT_KEY, RankwiseCallback, load_checkpoint_adapter  # noqa: E402
from rankwise.tasks import ClassificationExample, Task  # noqa: E402

STEPS = 6


def toy_task(name: str, classes: list[str], seed: int) -> Task:
    rng = random.Random(seed)  # each class is a band of token ids: learnable in a few steps
    train = [ClassificationExample([rng.randrange(1 + 12 * c, 13 + 12 * c) for _ in range(6)], c)
             for c in range(len(classes)) for _ in range(8)]  # fmt: skip
    return Task(name=name, train=train, test=train[:8], class_names=classes)


class ToyClassifier(pl.LightningModule):
    def __init__(self, backbone: ToyBackbone, model) -> None:
        super().__init__()
        self.backbone = backbone  # tokenisation only; its .model is model.base_model
        self.model = model
        self.task: Task | None = None

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch["tokens"], batch["class_tokens"]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.trainable_parameters(), lr=1e-2)

    def loader(self, task: Task) -> torch.utils.data.DataLoader:
        self.task = task
        return torch.utils.data.DataLoader(task.train, batch_size=8, shuffle=False,
                                           collate_fn=lambda ex: self.backbone.collate(ex, task, train=True))  # fmt: skip


def trainer(tmp_path, callbacks, **extra) -> pl.Trainer:
    return pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **extra)  # fmt: skip


def toy_model():
    backbone = ToyBackbone(ToyBackboneConfig())
    config = CoDyRAConfig(r=4, preset="toy", k_max=2.0, modules_to_save=["input_tower.ln_final"])
    return backbone, get_model(backbone.model, config)


def test_two_tasks_lifecycle_adapter_only_checkpoint_and_reload(tmp_path):
    backbone, model = toy_model()
    module = ToyClassifier(backbone, model)
    frozen_before = model.base_model.text_tower.token_embedding.weight.detach().clone()
    norm_before = model.base_model.input_tower.ln_final.weight.detach().clone()
    calls: list[tuple[int, int]] = []
    step = model.after_optimizer_step
    model.after_optimizer_step = lambda i, t: (calls.append((i, t)), step(i, t))[1]
    tasks = [toy_task("animals", ["cat", "dog"], 0), toy_task("colours", ["red", "green", "blue"], 1)]
    for task in tasks:
        keep = ModelCheckpoint(dirpath=tmp_path / task.name, every_n_train_steps=STEPS, save_top_k=-1)
        trainer(tmp_path, [RankwiseCallback(task.name), keep]).fit(module, module.loader(task))
        assert model.current_task is None and model.tasks[-1] == task.name
    assert calls == [(i, STEPS) for i in range(1, STEPS + 1)] * 2
    report = model.rank_report()
    assert all(len(r["merged_ranks"]) == 2 for r in report)
    assert sum(r["merged_ranks"][0] for r in report) < 4 * len(report)  # the prox pruned gates
    assert not torch.equal(model.base_model.input_tower.ln_final.weight, norm_before)  # trained in full
    assert torch.equal(model.base_model.text_tower.token_embedding.weight, frozen_before)  # frozen

    path = next((tmp_path / "colours").glob("*.ckpt"))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # saved during task 2: its live factors (A, B, gate per adapted layer) and the module trained in full,
    # no frozen weight
    layers = [f"model.base_model.{name}" for name in model.adapter_layers()]
    expected = {f"{layer}.{key}" for layer in layers for key in ("lora_A", "lora_B", "gate")}
    expected |= {"model.base_model.input_tower.ln_final.weight", "model.base_model.input_tower.ln_final.bias"}
    assert set(checkpoint["state_dict"]) == expected
    assert checkpoint[CHECKPOINT_KEY]["adapter_config"]["current_task"] == "colours"

    model.save_pretrained(tmp_path / "final")  # after task 2 ended: compare with a reload of the last ckpt
    reloaded = load_checkpoint_adapter(ToyBackbone(ToyBackboneConfig()).model, path)
    assert reloaded.tasks == ["animals"] and reloaded.current_task == "colours"
    reloaded.end_task()  # the checkpoint was written before on_train_end: end the task as the run did
    batch = backbone.collate(tasks[1].train, tasks[1], train=True)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(batch["tokens"], batch["class_tokens"]),
                           model.eval()(batch["tokens"], batch["class_tokens"]))  # fmt: skip


def test_errors_name_what_was_given(tmp_path):
    backbone, model = toy_model()
    plain = ToyClassifier(backbone, backbone.model)  # a LightningModule without a RankwiseModel
    task = toy_task("animals", ["cat", "dog"], 0)
    with pytest.raises(TypeError, match=r"exactly one rankwise.RankwiseModel.*found 0 in ToyClassifier"):
        trainer(tmp_path, [RankwiseCallback("animals")]).fit(plain, plain.loader(task))
    with pytest.raises(TypeError, match=r"needs a rankwise.RankwiseModel, got ToyDualEncoder"):
        RankwiseCallback("animals", model=backbone.model)
    module = ToyClassifier(backbone, model)
    with pytest.raises(LifecycleError, match="no active task"):
        trainer(tmp_path, [RankwiseCallback()]).fit(module, module.loader(task))
    with pytest.raises(CheckpointError, match=r"'rankwise_adapter' is missing"):
        load_checkpoint_adapter(ToyBackbone(ToyBackboneConfig()).model, {"state_dict": {}})
