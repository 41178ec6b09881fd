"""Memory plan for LLaMA-2-7B (docs/scale.md) and a check of the estimator against a measured CPU step.

1. The 7B table: every method at the official TRACE settings (r 8 on q/k/v/o_proj, bf16, 8 tasks,
   sequence 4608 = MeetingBank's 4096-token prompt + 512-token answer, micro-batch 1, gradient
   checkpointing), one GPU / DDP, FSDP over 2, 4 and 8 GPUs, and int8 / nf4 bases. No weights are
   needed: the model is built on the meta device from LLaMA-2-7B's public shape.
2. The check: a SmolLM2-shaped Llama (random weights, float32) trains one step with each method in a
   fresh process; the peak resident memory minus the resident memory just before the step (model,
   adapters and optimizer built) is compared with the estimate's gradient, Adam-moment, activation
   and logits terms. Peak RSS counts the allocator's slack too, so the measurement is an upper bound
   of what the estimate models.

    python benchmarks/memory_plan.py                 # ~2 min on one CPU core
    python benchmarks/memory_plan.py --no-check      # the table only (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora", "codyra", "moram", "olora", "inflora", "moe-lora")
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000)  # fmt: skip
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152)  # fmt: skip


def adapter(method: str, **extra):
    from rankwise.adapters.methods import get_method

    return get_method(method).config(r=8, preset="llama", lora_dropout=0.1, **extra)


def table_7b() -> str:
    import torch
    from transformers import LlamaConfig

    from rankwise.engine.memory_plan import LMShape, estimate, meta_model, render

    config = LlamaConfig(**LLAMA2_7B)
    model = meta_model(config)
    shape = LMShape.from_config(config)
    common = dict(num_tasks=8, seq_len=4608, batch=1, element=2, checkpointing=True)
    plans = []
    for method in ("full", *METHODS):
        cfg = None if method == "full" else adapter(method)
        for kw in ({}, {"parallel": "ddp", "gpus": 8}, {"parallel": "fsdp", "gpus": 4}, {"parallel": "fsdp", "gpus": 8},
                   {"quant": "int8"}, {"quant": "nf4"}):  # fmt: skip
            if method == "full" and "quant" in kw:
                continue  # a quantized base cannot be fine-tuned itself
            if method == "olora" and kw.get("parallel") == "fsdp":
                continue  # refused: its regulariser needs whole tensors outside the forward
            plan = estimate(model, shape, cfg, **common, **kw)
            plan.label = f"{method}, {plan.label}"
            plans.append(plan)
    del torch
    return render(plans)


CHILD = r"""
import json, resource, sys, torch
from transformers import LlamaConfig, AutoModelForCausalLM
sys.path.insert(0, {bench!r})
from memory_plan import SMOLLM2, adapter
import rankwise
from rankwise.engine.memory_plan import LMShape, estimate
torch.manual_seed(0); torch.set_num_threads(1)
method, seq, batch, ckpt = {method!r}, {seq}, {batch}, {ckpt}
config = LlamaConfig(**SMOLLM2, attn_implementation="sdpa")
model = AutoModelForCausalLM.from_config(config)
if ckpt:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{"use_reentrant": False}})
cfg = adapter(method)
rm = rankwise.get_model(model, cfg)
ids = torch.randint(0, config.vocab_size, (batch, seq))
if method == "inflora":
    with rm.collecting_task_inputs():
        with torch.no_grad():
            model(input_ids=ids[:, :64])
rm.begin_task("t")
rm.train()
opt = torch.optim.Adam(rm.trainable_parameters(), lr=1e-4)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = int(open("/proc/self/statm").read().split()[1]) * 4096
loss = model(input_ids=ids, labels=ids).loss
loss.backward(); opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.device("meta"):
    meta = AutoModelForCausalLM.from_config(config)
plan = estimate(meta, LMShape.from_config(config), cfg, num_tasks=1, seq_len=seq, batch=batch, element=4,
                checkpointing=ckpt)
trainable = sum(p.numel() for p in rm.trainable_parameters())
modelled = plan.parts["activations"] + plan.parts["logits"] + 3 * trainable * 4  # grads + 2 moments
print(json.dumps({{"measured": max(peak, before) - base, "modelled": modelled}}))
"""


def check(method: str, seq: int, batch: int, ckpt: bool) -> dict:
    code = CHILD.format(bench=str(ROOT / "benchmarks"), method=method, seq=seq, batch=batch, ckpt=ckpt)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-check", action="store_true", help="print the 7B table only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_plan.json"))
    args = parser.parse_args()
    from rankwise import io

    result: dict = {"machine": f"{platform.machine()} CPU, 1 thread", "table_7b": table_7b(), "check": []}
    print(result["table_7b"])
    if args.no_check and Path(args.out).exists():  # keep the last measured check
        result["check"] = json.loads(Path(args.out).read_text()).get("check", [])
    if not args.no_check:
        print("\n| method | seq x batch | checkpointing | modelled MiB | measured MiB | measured / modelled |")
        print("|---|---|---|---|---|---|")
        for method in ("lora", "moram", "inflora"):
            for seq, batch, ckpt in ((512, 2, False), (512, 2, True)):
                row = check(method, seq, batch, ckpt)
                row |= {"method": method, "seq": seq, "batch": batch, "checkpointing": ckpt}
                result["check"].append(row)
                print(f"| {method} | {seq} x {batch} | {'on' if ckpt else 'off'} | {row['modelled'] / 2**20:.0f} | "
                      f"{row['measured'] / 2**20:.0f} | {row['measured'] / row['modelled']:.2f} |", flush=True)  # fmt: skip
    io.write_json(args.out, result)


if __name__ == "__main__":
    main()
