"""TRACE-format scenario: folder loader on fixture folders, caps, metrics, errors, shared-text stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankwise.config import load_config
from rankwise.errors import ConfigError, DataError
from rankwise.scenarios.trace import TRACE_EPOCHS, TraceConfig, build_scenario, shared_text_prompt
from rankwise.scoring import SCORERS
from rankwise.tasks import GenerationExample

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_task(root: Path, name: str, splits: dict[str, list]) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        (root / name / f"{split}.json").write_text(json.dumps(items), encoding="utf-8")


def pairs(n: int, tag: str) -> list[dict]:
    return [{"prompt": f"{tag} prompt {i}", "answer": f"{tag} answer {i}"} for i in range(n)]


@pytest.fixture
def root(tmp_path):
    write_task(tmp_path, "FOMC", {"train": pairs(10, "f"), "test": pairs(4, "ft")})
    write_task(tmp_path, "Py150", {"train": pairs(6, "p"), "eval": pairs(3, "pe")})
    write_task(tmp_path, "mine", {"train": pairs(5, "m"), "test": pairs(5, "mt"), "eval": pairs(2, "me")})
    return tmp_path


def test_folder_stream_order_metrics_and_fallback(root):
    tasks = build_scenario(TraceConfig(root=str(root), tasks=["Py150", "mine", "FOMC"]), seed=0)
    assert [t.name for t in tasks] == ["Py150", "mine", "FOMC"]
    assert [t.metric for t in tasks] == ["py150_similarity", "exact_match", "trace_choice_accuracy"]
    assert [t.max_new_tokens for t in tasks] == [64, 64, 8]
    py, mine, fomc = tasks
    assert py.info["test_split"] == "eval" and mine.info["test_split"] == "test"
    assert py.test == [GenerationExample(f"pe prompt {i}", f"pe answer {i}") for i in range(3)]
    assert fomc.train[3] == GenerationExample("f prompt 3", "f answer 3") and len(fomc.train) == 10


def test_caps_are_seeded_ordered_subsamples_and_test_is_seed_independent(root):
    cfg = TraceConfig(root=str(root), tasks=["FOMC", "mine"], max_train={"FOMC": 4}, max_test=2)
    a = build_scenario(cfg, seed=0)
    b = build_scenario(cfg, seed=1)
    assert len(a[0].train) == 4 and len(a[1].train) == 5  # cap only for FOMC
    idx = [int(ex.prompt.split()[-1]) for ex in a[0].train]
    assert idx == sorted(idx) and len(set(idx)) == 4
    assert a[0].train == build_scenario(cfg, seed=0)[0].train
    assert a[0].train != b[0].train  # run seed changes the training subsample (4 of 10: 210 ways)
    assert a[0].test == b[0].test and len(a[0].test) == 2
    assert a[0].info["n_train_available"] == 10


def test_validation_is_held_out_of_train_before_the_cap_and_fixed_across_seeds(root):
    cfg = dict(root=str(root), tasks=["FOMC"], validation_size=3, max_train=4)
    (trained,) = build_scenario(TraceConfig(**cfg), seed=0)
    (scored,) = build_scenario(TraceConfig(**cfg, evaluate_on="validation"), seed=0)
    (other_seed,) = build_scenario(TraceConfig(**cfg, evaluate_on="validation"), seed=5)
    validation = {ex.prompt for ex in scored.test}
    assert len(validation) == 3 and validation <= {f"f prompt {i}" for i in range(10)}
    assert not validation & {ex.prompt for ex in trained.train} and len(trained.train) == 4
    assert trained.test == [GenerationExample(f"ft prompt {i}", f"ft answer {i}") for i in range(4)]
    assert other_seed.test == scored.test  # test_seed, not the run seed
    for seed in range(6):  # no run seed's training subsample touches the validation items
        (task,) = build_scenario(TraceConfig(**cfg), seed=seed)
        assert not validation & {ex.prompt for ex in task.train}
    assert scored.info["n_validation"] == 3 and scored.info["evaluated_split"] == "validation"
    with pytest.raises(ConfigError, match="scenario.validation_size.*fewer than the 10 train examples"):
        build_scenario(TraceConfig(root=str(root), tasks=["FOMC"], validation_size=10), seed=0)
    with pytest.raises(ConfigError, match="scenario.evaluate_on"):
        TraceConfig(root=str(root), tasks=["FOMC"], evaluate_on="validation")


def test_overrides(root):
    cfg = TraceConfig(
        root=str(root),
        tasks=["FOMC", "mine"],
        metrics={"mine": "rouge_l"},
        max_new_tokens={"mine": 100},
        default_metric="edit_similarity",
    )
    fomc, mine = build_scenario(cfg, 0)
    assert (mine.metric, mine.max_new_tokens, fomc.max_new_tokens) == ("rouge_l", 100, 8)


def test_config_errors():
    with pytest.raises(ConfigError, match="scenario.root"):
        TraceConfig(tasks=["a"])
    with pytest.raises(ConfigError, match="scenario.tasks"):
        TraceConfig(root="x")
    with pytest.raises(ConfigError, match="scenario.source"):
        TraceConfig(source="hub", root="x", tasks=["a"])
    with pytest.raises(ConfigError, match="scenario.tasks"):
        TraceConfig(root="x", tasks=["a", "a"])
    with pytest.raises(ConfigError, match="scenario.metrics.a"):
        TraceConfig(root="x", tasks=["a"], metrics={"a": "bleu"})
    with pytest.raises(ConfigError, match="scenario.max_train.b"):
        TraceConfig(root="x", tasks=["a"], max_train={"b": 3})
    with pytest.raises(ConfigError, match="scenario.max_test"):
        TraceConfig(root="x", tasks=["a"], max_test=0)
    with pytest.raises(ConfigError, match="scenario.tasks"):
        TraceConfig(source="shared-text", tasks=["mnli"])


def test_data_errors(root):
    def build(task):
        return build_scenario(TraceConfig(root=str(root), tasks=[task]), 0)

    with pytest.raises(DataError, match="does not exist.*FOMC"):
        build("nope")
    write_task(root, "notest", {"train": pairs(2, "x")})
    with pytest.raises(DataError, match="no test split.*test.json, eval.json"):
        build("notest")
    write_task(root, "notrain", {"test": pairs(2, "x")})
    with pytest.raises(DataError, match="missing train split"):
        build("notrain")
    write_task(root, "empty", {"train": [], "test": pairs(2, "x")})
    with pytest.raises(DataError, match="train split is empty"):
        build("empty")
    write_task(root, "keys", {"train": [{"prompt": "p", "output": "o"}], "test": pairs(1, "x")})
    with pytest.raises(
        DataError, match=r"item 0: expected an object with keys 'prompt' and 'answer', found \['output'"
    ):
        build("keys")
    write_task(root, "types", {"train": [{"prompt": "p", "answer": 3}], "test": pairs(1, "x")})
    with pytest.raises(DataError, match="item 0: 'answer' must be a string, found int"):
        build("types")
    write_task(root, "nulls", {"train": [{"prompt": None, "answer": "a"}], "test": pairs(1, "x")})
    with pytest.raises(DataError, match="item 0: 'prompt' must be a string, found NoneType"):
        build("nulls")
    write_task(root, "bad", {"test": pairs(1, "x")})
    (root / "bad" / "train.json").write_text('[{"prompt": "p", "answer"', encoding="utf-8")
    with pytest.raises(DataError, match="not valid UTF-8 JSON"):
        build("bad")
    (root / "bad" / "train.json").write_text('{"prompt": "p", "answer": "a"}', encoding="utf-8")
    with pytest.raises(DataError, match="JSON list"):
        build("bad")


@pytest.mark.skipif(not (SHARED / "text").is_dir(), reason="shared/data/text not present")
def test_shared_text_stream_from_real_data():
    cfg = TraceConfig(
        source="shared-text",
        root=str(SHARED),
        tasks=["fomc", "agnews", "trec", "sst2"],
        max_train=50,
        max_test=20,
    )
    fomc, agnews, trec, sst2 = build_scenario(cfg, 0)
    assert fomc.train[0].prompt.startswith("What is the monetary policy stance")
    assert {ex.answer for ex in fomc.test} <= {"dovish", "hawkish", "neutral"}
    words = ["world news", "sports", "business", "science and technology"]
    assert {ex.answer for ex in agnews.train} <= set(words) and len(agnews.train) == 50
    assert agnews.train[0].prompt.startswith(
        "What is the topic of this news article? Answer with one of: world news, sports, business, "
        "science and technology.\nTitle: "
    ) and agnews.train[0].prompt.endswith("\nAnswer:")
    assert trec.train[0].prompt.split("\n")[1].startswith("Question: ")
    assert {ex.answer for ex in trec.test} <= {
        "abbreviation",
        "description",
        "entity",
        "person",
        "location",
        "number",
    }
    assert {ex.answer for ex in sst2.test} <= {"positive", "negative"}
    assert all(t.metric == "exact_match" and t.max_new_tokens == 8 for t in (fomc, agnews, trec, sst2))
    assert "{text}" in agnews.info["template"]


def test_shared_text_prompt_template():
    assert shared_text_prompt("trec", "Who was Galileo ?", ["person", "number"]) == (
        "What type of thing does this question ask for? Answer with one of: person, number.\n"
        "Question: Who was Galileo ?\nAnswer:"
    )


# -- the official TRACE protocol: official-format data, official scorers, the official-runner preset ----
# one example per task in the official LLM-CL-Benchmark format (written for these tests)
OFFICIAL = {
    "C-STANCE": (
        "判断以下文本对指定对象的态度，选择一项：A.支持，B.反对，C.中立。输出A，B或者C。\n文本：\n好\n态度：",
        "A",
    ),
    "FOMC": (
        "What is the monetary policy stance for the following text? A. dovish, B. hawkish, "
        "C. neutral. Choose one from A, B and C.\nText:\nRates stay low.\nStance:",
        "A",
    ),
    "MeetingBank": (
        "Write a summary of the following meeting transcripts.\nMeeting transcripts:\n"
        "Council votes on the bill.\nSummary:",
        "AN ORDINANCE relating to fees.",
    ),
    "Py150": ("<s> import os <EOL> x = <NUM_LIT:1> <EOL>", "return x + <NUM_LIT:200>"),
    "ScienceQA": (
        "Choose an answer for the following question and give your reasons.\n\nQuestion:\n"
        "Which is a solid?\n\nChoices:\nA. milk\nB. rock\n\nAnswer:",
        "B\nA solid has a shape of its own.",
    ),
    "NumGLUE-cm": (
        "Solve the following math problem.\nQuestion:\nHow many eyes do 3 frogs have?\nAnswer:",
        "6",
    ),
    "NumGLUE-ds": ("Solve the following math problem.\nQuestion:\nHalf of 27?\nAnswer:", "13.5"),
    "20Minuten": (
        "Provide a simplified version of the following paragraph in German.\n\nParagraph:\n"
        "Der Rat hat heute entschieden.\n\nSimplified version:",
        "Der Rat entschied.",
    ),
}


def write_official(root: Path, n_train: int = 3, n_test: int = 2) -> None:
    for task, (prompt, answer) in OFFICIAL.items():
        item = {"prompt": prompt, "answer": answer}
        write_task(root, task, {"train": [item] * n_train, "test": [item] * n_test, "eval": [item]})


def test_official_format_gold_answers_score_full_marks(tmp_path):
    write_official(tmp_path)
    tasks = build_scenario(TraceConfig(root=str(tmp_path), tasks=list(OFFICIAL)), seed=0)
    for t in tasks:
        golds = [ex.answer for ex in t.test]
        if t.metric == "sari":
            targets = [(ex.prompt, ex.answer) for ex in t.test]
            assert 0.0 < SCORERS["sari"](golds, targets) <= 100.0
            continue
        # MeetingBank: the official ROUGE call appends "\n" to a prediction without one, which after
        # the "." split adds an empty word: n = 6 distinct words vs m = 5 -> F = 2 (5/6) / (11/6) = 10/11
        full = 1000 / 11 if t.name == "MeetingBank" else 100.0
        assert SCORERS[t.metric](golds, golds) == pytest.approx(full, abs=1e-5), t.name
    scienceqa = next(t for t in tasks if t.name == "ScienceQA")
    assert (
        SCORERS[scienceqa.metric](
            ["B\nBecause rocks keep their shape."] * 2, [ex.answer for ex in scienceqa.test]
        )
        == 100.0
    )


def test_epochs_become_iterations_per_task(tmp_path):
    write_official(tmp_path, n_train=50)
    cfg = TraceConfig(
        root=str(tmp_path), tasks=["FOMC", "Py150"], epochs={"FOMC": 1, "Py150": 3}, examples_per_step=32
    )
    fomc, py = build_scenario(cfg, 0)
    # ceil(1 * 50 / 32) = 2 ; ceil(3 * 50 / 32) = ceil(4.6875) = 5
    assert (fomc.info["epochs"], fomc.info["iterations"]) == (1, 2)
    assert (py.info["epochs"], py.info["iterations"]) == (3, 5)
    assert "iterations" not in build_scenario(TraceConfig(root=str(tmp_path), tasks=["FOMC"]), 0)[0].info
    with pytest.raises(ConfigError, match="scenario.examples_per_step"):
        TraceConfig(root="x", tasks=["a"], epochs=2)
    with pytest.raises(ConfigError, match="scenario.epochs"):
        TraceConfig(root="x", tasks=["a"], examples_per_step=32)
    with pytest.raises(ConfigError, match="scenario.examples_per_step"):
        TraceConfig(root="x", tasks=["a"], epochs=2, examples_per_step=0)
    with pytest.raises(ConfigError, match="scenario.epochs.b"):
        TraceConfig(root="x", tasks=["a"], epochs={"b": 1}, examples_per_step=8)


OFFICIAL_PRESETS = [
    "trace_official_moram.yaml",
    "llm_gemma_2b_it_trace_moram.yaml",
    "llm_llama2_7b_chat_trace_moram.yaml",
    "llm_llama32_1b_trace_moram.yaml",
]


@pytest.mark.parametrize("preset", OFFICIAL_PRESETS)
def test_official_runner_preset_carries_the_official_values(preset, tmp_path):
    write_official(tmp_path, n_train=500, n_test=100)
    model = tmp_path / "model"
    cfg = load_config(REPO / "configs" / preset, [f"scenario.root={tmp_path}", f"backbone.path={model}"])
    assert cfg.seed == 1234  # runner_moram.sh --seed 1234
    bb, sc, tr, method = cfg.backbone.config, cfg.scenario.config, cfg.train, cfg.method.options
    assert bb.path == str(model) and bb.dtype == "bfloat16"
    assert (bb.prompt_format, bb.chat_template) == ("trace", "off")  # raw prompt + EOS, no template
    assert (bb.max_prompt_length, bb.max_answer_length) == (1024, 512)
    assert bb.task_max_prompt_length == {"MeetingBank": 4096} and bb.keep_prompt_start == ["MeetingBank"]
    assert (bb.do_sample, bb.repetition_penalty, bb.no_repeat_ngram_size) == (False, 1.2, 3)  # infer_part.py
    assert bb.strip_predictions is False
    assert (tr.batch_size * tr.grad_accumulation, tr.lr, tr.optimizer, tuple(tr.betas)) == (
        32,
        5e-4,
        "adam",
        (0.9, 0.95),
    )
    assert (tr.schedule, tr.warmup_iterations, tr.weight_decay, tr.grad_clip) == ("constant", 0, 0.0, 1.0)
    assert {k: method[k] for k in ("r", "top_k", "tau", "delta", "lora_alpha")} == {
        "r": 8,
        "top_k": 8,
        "tau": 0.03,
        "delta": 0.2,
        "lora_alpha": 16,
    }
    assert sc.tasks == list(OFFICIAL) and sc.epochs == TRACE_EPOCHS
    assert TRACE_EPOCHS == dict(zip(OFFICIAL, (2, 1, 3, 2, 1, 2, 2, 3)))  # runner_moram.sh epochs
    tasks = build_scenario(sc, cfg.seed)
    assert [(len(t.train), len(t.test)) for t in tasks] == [(500, 100)] * 8
    assert all(t.max_new_tokens == 512 for t in tasks)  # --max_ans_len 512 for every task
    # ceil(epochs * 500 / 32): 2 -> 32, 1 -> 16, 3 -> 47
    assert [t.info["iterations"] for t in tasks] == [32, 16, 47, 32, 16, 32, 32, 47]
    assert {t.name: t.metric for t in tasks}["20Minuten"] == "sari"


def test_text_and_trace_read_the_shared_sets_through_one_module():
    """The task table and readers live in `scenarios.readers`; text-mtil's old import paths still work."""
    from rankwise.scenarios import readers, text, trace

    assert trace.TASKS is readers.TASKS is text.TASKS
    assert trace.load_trec is readers.load_trec is text.load_trec
    assert trace.load_cl_benchmark is readers.load_cl_benchmark is text.load_cl_benchmark
    assert text.resolve_root is readers.resolve_root and text.load_lines is readers.load_lines
