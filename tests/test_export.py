"""``rankwise export RUN_DIR --to peft|merged|rankwise [--task N]`` on real runs, checked with real peft.

Runs: a tiny random BERT (sentence-encoder backbone, saved to tmp) on a two-task word stream defined
here (registered for the test only), and the toy backbone on the synthetic stream. Each export is
compared with the model rebuilt from the run's own task checkpoint by `rankwise.load_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from rankwise import load_model
from rankwise.adapters.adapter_files import PEFT_TYPE_MARKER
from rankwise.cli import main
from rankwise.config import config_from_dict
from rankwise.engine.continual import run_experiment
from rankwise.errors import CheckpointError
from rankwise.registry import SCENARIOS, Entry
from rankwise.tasks import ClassificationExample, Task

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] this is about sports news good bad movie won game film great awful".split()
SENTENCES = {
    "topic": (["sports", "movie"], [("won game", 0), ("game news", 0), ("film great", 1), ("movie film", 1)]),
    "mood": (["good", "bad"], [("great film", 0), ("good game", 0), ("awful movie", 1), ("bad news", 1)]),
}


@dataclass
class WordsConfig:
    """The two-task word stream of these tests (no options that matter)."""

    repeat: int = field(default=2, metadata={"help": "copies of each sentence in train"})


def build_words(config: WordsConfig, seed: int) -> list[Task]:
    tasks = []
    for name, (classes, rows) in SENTENCES.items():
        examples = [ClassificationExample(text, label) for text, label in rows]
        tasks.append(Task(name, examples * config.repeat, examples, classes, ["this is about {}"]))
    return tasks


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    cfg = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(folder)
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


def _run(out: Path, method: str, backbone: dict, scenario: dict) -> Path:
    section = {"name": method, "r": 4}
    if method == "codyra":
        section.update(k_max=1e-4, ramp_steps=1)  # a light prox: most ranks survive 4 steps
    config = config_from_dict({
        "name": f"export_{method}", "seed": 0, "device": "cpu", "method": section, "backbone": backbone,
        "scenario": scenario, "output": {"dir": str(out)},
        "train": {"iterations": 4, "batch_size": 4, "lr": 5e-2, "log_every": 2, "checkpoint_every": 4},
    })  # fmt: skip
    return Path(run_experiment(config, quiet=True).run_dir)


@pytest.fixture(scope="module", autouse=True)
def words_scenario():
    """The word stream as scenario ``test-words`` while this module's tests run (export reads the config)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SCENARIOS, "test-words", Entry("test-words", f"{__name__}:WordsConfig", f"{__name__}:build_words", "t"))
        yield


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, tiny_bert: Path) -> Path:
    backbone = {"name": "sentence-encoder", "model_path": str(tiny_bert), "max_length": 8}
    return _run(tmp_path_factory.mktemp("runs") / "bert", "codyra", backbone, {"name": "test-words"})


def toy_run(out: Path, method: str) -> Path:
    scenario = {"name": "synthetic", "num_tasks": 2, "train_per_class": 4, "test_per_class": 2}
    return _run(out, method, {"name": "toy", "dim": 16, "embed_dim": 16}, scenario)


def checkpoint_of(run_dir: Path, n: int) -> Path:
    (folder,) = (run_dir / "checkpoints").glob(f"task_{n}_*")
    return folder


def rankwise_model(tiny_bert: Path, run_dir: Path, n: int):
    return load_model(transformers.AutoModel.from_pretrained(tiny_bert), checkpoint_of(run_dir, n)).eval()


def hidden(model, tiny_bert: Path) -> torch.Tensor:
    tok = transformers.AutoTokenizer.from_pretrained(tiny_bert)
    batch = tok(["won game news", "awful movie"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).last_hidden_state


def surviving_ranks(model) -> dict[str, int]:
    """{layer: ranks merged over all tasks so far}, for the layers where some survived."""
    ranks = {name: sum(layer.merged_ranks) for name, layer in model.adapter_layers().items()}
    return {name: r for name, r in ranks.items() if r}


def export(run_dir: Path, *args: str) -> Path:
    out = run_dir.parent / ("out_" + "_".join(a.strip("-") for a in args))
    assert main(["export", str(run_dir), *args, "--out", str(out)]) == 0
    return out


# -- peft ---------------------------------------------------------------------------------------------
def test_peft_export_of_a_run_loads_in_peft_with_base_and_task_type(bert_run: Path, tiny_bert: Path) -> None:
    out = export(bert_run, "--to", "peft")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "FEATURE_EXTRACTION"
    assert saved["base_model_name_or_path"] == str(tiny_bert)
    reference = rankwise_model(tiny_bert, bert_run, 2)
    assert saved["rank_pattern"] == surviving_ranks(reference)
    # AutoPeftModel finds the base model through base_model_name_or_path and the class through task_type
    auto = peft.AutoPeftModelForFeatureExtraction.from_pretrained(out).eval()
    manual = peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(tiny_bert), out).eval()
    expected = hidden(reference, tiny_bert)
    assert not torch.allclose(hidden(transformers.AutoModel.from_pretrained(tiny_bert), tiny_bert), expected, atol=1e-3)
    torch.testing.assert_close(hidden(auto, tiny_bert), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden(manual, tiny_bert), expected, rtol=1e-5, atol=1e-5)


def test_task_option_exports_the_state_after_that_task(bert_run: Path, tiny_bert: Path, capsys) -> None:
    first = export(bert_run, "--to", "peft", "--task", "1", "--base-model", "org/tiny-bert")
    saved = json.loads((first / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "org/tiny-bert"
    after_1 = rankwise_model(tiny_bert, bert_run, 1)
    assert saved["rank_pattern"] == surviving_ranks(after_1)
    loaded = peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(tiny_bert), first).eval()
    torch.testing.assert_close(hidden(loaded, tiny_bert), hidden(after_1, tiny_bert), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hidden(after_1, tiny_bert), hidden(rankwise_model(tiny_bert, bert_run, 2), tiny_bert))
    capsys.readouterr()
    assert main(["export", str(bert_run), "--to", "peft", "--task", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--task=3 is invalid" in err and "one of 1, 2" in err


# -- merged and rankwise ------------------------------------------------------------------------------
def test_merged_export_is_a_plain_transformers_folder(bert_run: Path, tiny_bert: Path) -> None:
    out = export(bert_run, "--to", "merged")
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    merged = transformers.AutoModel.from_pretrained(out).eval()
    assert type(merged).__name__ == "BertModel"
    torch.testing.assert_close(hidden(merged, out), hidden(rankwise_model(tiny_bert, bert_run, 2), tiny_bert),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_rankwise_export_round_trips_bit_identically(bert_run: Path, tiny_bert: Path) -> None:
    out = export(bert_run, "--to", "rankwise", "--task", "1")
    again = load_model(transformers.AutoModel.from_pretrained(tiny_bert), out).eval()
    assert torch.equal(hidden(again, tiny_bert), hidden(rankwise_model(tiny_bert, bert_run, 1), tiny_bert))


def test_toy_merged_export_is_the_merged_state_dict(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from rankwise.backbones.toy import ToyBackboneConfig, build_backbone

    run_dir = toy_run(tmp_path / "toy", "lora")
    out = export(run_dir, "--to", "merged")
    base = build_backbone(ToyBackboneConfig(dim=16, embed_dim=16), "cpu").model
    expected = load_model(base, checkpoint_of(run_dir, 2)).merge_and_unload().state_dict()
    saved = load_file(out / "model.safetensors")
    assert set(saved) == set(expected)
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key


# -- our own folder is not mistaken by peft; refusals are one line -----------------------------------------
def test_peft_refuses_a_rankwise_folder_with_a_message_naming_rankwise(bert_run: Path, tiny_bert: Path) -> None:
    folder = checkpoint_of(bert_run, 2)
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPE_MARKER
    with pytest.raises(KeyError) as info:
        peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(tiny_bert), folder)
    assert "not a peft adapter but a rankwise one" in str(info.value)
    assert "rankwise.load_model" in str(info.value) and "rankwise export" in str(info.value)


def test_folders_without_the_marker_still_load_and_peft_folders_are_named(
    bert_run: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(checkpoint_of(bert_run, 1), old)
    header = json.loads((old / "adapter_config.json").read_text())
    del header["peft_type"]  # as written before the marker existed
    (old / "adapter_config.json").write_text(json.dumps(header))
    (old / "checksums.json").unlink()
    again = load_model(transformers.AutoModel.from_pretrained(tiny_bert), old).eval()
    assert torch.equal(hidden(again, tiny_bert), hidden(rankwise_model(tiny_bert, bert_run, 1), tiny_bert))
    peft_dir = export(bert_run, "--to", "peft", "--task", "2")
    with pytest.raises(CheckpointError, match=r"is a peft adapter \(peft_type='LORA'\).*PeftModel.from_pretrained"):
        load_model(transformers.AutoModel.from_pretrained(tiny_bert), peft_dir)


def test_moram_run_exports_only_as_rankwise(tmp_path: Path, capsys) -> None:
    run_dir = toy_run(tmp_path / "moram", "moram")
    capsys.readouterr()
    for to in ("peft", "merged"):
        assert main(["export", str(run_dir), "--to", to]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--to='{to}' is invalid" in err and "'moram' run" in err
    assert not (run_dir / "export").exists()
    out = export(run_dir, "--to", "rankwise")
    assert json.loads((out / "adapter_config.json").read_text())["config"]["method"] == "moram"


def test_push_to_hub_offline_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    run_dir = toy_run(tmp_path / "toy", "codyra")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert main(["export", str(run_dir), "--to", "rankwise", "--push-to-hub", "me/my-adapter"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE is set" in err and "hf upload me/my-adapter" in err
    assert not (run_dir / "export").exists()
    assert main(["export", str(run_dir), "--to", "rankwise", "--push-to-hub", "not a repo"]) == 2
    assert "--push-to-hub='not a repo' is invalid" in capsys.readouterr().err


def test_existing_out_folder_needs_overwrite(tmp_path: Path, capsys) -> None:
    run_dir = toy_run(tmp_path / "toy", "codyra")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(run_dir), "--to", "rankwise", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep"
    assert main(["export", str(run_dir), "--to", "rankwise", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and (out / "adapter_config.json").is_file()


def test_peft_export_carries_a_fully_trained_head(tmp_path: Path) -> None:
    """`modules_to_save` (a classifier head trained in full) is exported as peft's ``modules_to_save``:
    peft's own loader gives the logits of the rankwise model, head and merged CoDyRA delta both."""
    from rankwise import CoDyRAConfig, export_peft, get_model

    cfg = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "base")

    def fresh():
        return transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base").eval()

    model = get_model(fresh(), CoDyRAConfig(r=4, preset="bert", modules_to_save=["classifier"]))
    model.begin_task("t")
    with torch.no_grad():  # move every trained tensor off its init (B = 0 and an untouched head hide errors)
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.end_task()
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 9, 10, 3, 0]])
    mask = (ids != 0).long()
    model.eval()
    want = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(want, fresh()(input_ids=ids, attention_mask=mask).logits, atol=1e-3)

    out = export_peft(model, tmp_path / "peft", task_type="SEQ_CLS")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"]
    loaded = peft.PeftModel.from_pretrained(fresh(), out).eval()
    got = loaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
