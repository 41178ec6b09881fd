"""benchmarks/speed.py --quick runs end to end on tiny models and writes a consistent JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import rankwise.adapters.base

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


def test_autocast_bf16_runs_every_variant_under_autocast(speed, tmp_path, monkeypatch):
    seen: list[torch.dtype] = []  # the dtype each adapted layer's input arrives in
    forward = rankwise.adapters.base.AdapterLayer.__call__

    def spy(self, x, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(rankwise.adapters.base.AdapterLayer, "__call__", spy)
    out = tmp_path / "speed.json"
    speed.main(["--quick", "--models", "clip", "--no-layers", "--repeats", "1", "--autocast", "bf16", "--out", str(out)])
    whole = json.loads(out.read_text())["models"]["clip"]["whole_model"]
    assert whole["info"]["autocast"] == "bfloat16"
    assert seen and set(seen) == {torch.bfloat16}
    # the ratio to the frozen model with split attention (the fused one can hit slow paths under autocast)
    i = {v: r["median_s"] for v, r in whole["inference"].items()}
    assert whole["ratios"]["inference_vs_base_split"]["moram176"] == pytest.approx(i["moram176"] / i["base_split"])
    assert "x frozen base, split attention" in speed.markdown({"models": {"clip": {"whole_model": whole, "layers": {}}}})


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


STAND_IN = '''
import torch, torch.nn as nn, torch.nn.functional as F

class MoRAM_Linear(nn.Linear):
    """A stand-in with the official constructor and attributes: the dense formula of docs/methods.md."""
    def __init__(self, in_features, out_features, r=0, lora_alpha=1, lora_threshold=1.0, temp=0.01, topk=None, **kw):
        super().__init__(in_features, out_features)
        self.lora_A = nn.Parameter(torch.zeros(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        self.old_lora_A = self.old_lora_B = None
        self.lora_threshold, self.temp, self.topk = lora_threshold, temp, topk

    def forward(self, x):
        A = [t for t in (self.old_lora_A, self.lora_A) if t is not None]
        B = [t for t in (self.old_lora_B, self.lora_B) if t is not None]
        A, B = torch.cat(A), torch.cat(B, dim=1)
        p = x @ A.T
        s = F.normalize(p, dim=-1)
        top, idx = s.topk(max(self.topk, 2), dim=-1)
        w = torch.zeros_like(s).scatter(-1, idx, torch.softmax(top / self.temp, dim=-1))
        if not self.training and self.lora_threshold > 0:
            w = w * (s >= self.lora_threshold)
        return F.linear(x, self.weight, self.bias) + (p * w) @ B.T, 0
'''


def test_official_layer_is_timed_beside_ours_with_the_same_weights(speed, tmp_path):
    """--official-moram loads MoRAM_Linear from a checkout (here a stand-in computing the dense formula),
    gives it our bank, live atoms and base weight, and checks the outputs agree before timing."""
    source = tmp_path / "XTAIL" / "loralib" / "moram.py"
    source.parent.mkdir(parents=True)
    source.write_text(STAND_IN)
    official = speed.load_official_moram(str(tmp_path))
    result = speed.bench(speed.layer_workload(24, 16, 10, "cpu", official), repeats=1, device="cpu")
    assert result["official_max_abs_difference"] < 1e-5
    assert "official_moram176" in result["train"] and "official_moram176" in result["inference"]
    with pytest.raises(SystemExit, match="not found"):
        speed.load_official_moram(str(tmp_path / "nowhere"))
