"""benchmarks/speed.py --quick runs end to end on tiny models and writes a consistent JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def speed(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import speed as module

    return module


def test_quick_benchmark_writes_ratios_and_mac_floor(speed, tmp_path):
    out = tmp_path / "speed.json"
    report = speed.main(["--quick", "--models", "minilm,smollm2", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["conditions_start"]["torch_threads"] == 1 and "loadavg" in saved["conditions_start"]
    for name in ("minilm", "smollm2"):
        whole = saved["models"][name]["whole_model"]
        assert set(whole["train"]) == set(speed.TRAIN_VARIANTS)
        assert set(whole["inference"]) == set(speed.INFER_VARIANTS)
        ratios = whole["ratios"]
        assert ratios["train_vs_base"]["base"] == 1.0 and ratios["train_vs_peft_lora"]["peft_lora"] == 1.0
        t = {v: r["median_s"] for v, r in whole["train"].items()}
        assert ratios["train_vs_peft_lora"]["lora"] == pytest.approx(t["lora"] / t["peft_lora"])
        # the floor is 1 + R * sum(tokens x d_in) / base MACs: linear in R, by construction from the shapes
        floor = whole["moram_mac_floor"]
        extra16 = floor["moram16"] - 1
        assert extra16 > 0 and floor["moram176"] - 1 == pytest.approx(11 * extra16)
        assert (
            whole["train_memory_mib"]["moram176"]["peak_mib"] > whole["train_memory_mib"]["base"]["peak_mib"]
        )
        assert saved["models"][name]["layers"], "per-layer results missing"
    assert report["models"].keys() == saved["models"].keys()


def test_mac_floor_matches_hand_count(speed):
    """One 8 -> 4 linear on 5 tokens: base 5*8*4 MACs; R atoms add 5*R*8 MACs."""
    w = speed.layer_workload(8, 4, 5, "cpu")
    result = speed.bench(w, repeats=1, device="cpu", train=False)
    assert result["base_macs"] == 5 * 8 * 4
    assert result["moram_mac_floor"]["moram48"] == pytest.approx(1 + 5 * 48 * 8 / (5 * 8 * 4))


def test_unknown_model_is_rejected(speed, capsys):
    with pytest.raises(SystemExit):
        speed.main(["--quick", "--models", "vit_h"])
    assert "vit_h" in capsys.readouterr().err and "clip" in sys.modules["speed"].MODELS
