"""Timing, memory and multiply-add helpers shared by the benchmark scripts.

Timing: every variant is timed once per round, rounds are repeated and the variant order rotates from
round to round (interleaving), so slow drifts in machine load hit all variants alike; we report medians.
Memory on CPU: PyTorch's CPU allocator has no peak counter, so we count what a training step must hold
at its peak: the bytes autograd saves for backward (unique storages that are not model weights, via
``saved_tensors_hooks``) plus trainable parameters x 4 (weight, grad, two AdamW moments) and the
frozen weights. On CUDA we report ``torch.cuda.max_memory_allocated`` of the step instead.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call of `fn`, synchronised on CUDA."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, device: str, warmup: int = 1
) -> dict[str, dict[str, float | list[float]]]:
    """Run every fn `warmup` times, then `repeats` rounds with a rotating order; median seconds each."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(time_call(fns[name], device))
    return {
        n: {"median_s": statistics.median(s), "min_s": min(s), "samples_s": [round(v, 6) for v in s]}
        for n, s in samples.items()
    }


@contextmanager
def saved_bytes_counter(model: nn.Module) -> Iterator[dict[str, int]]:
    """Count the bytes of distinct non-weight storages autograd saves for backward inside the block."""
    weights = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: set[int] = set()
    result = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            result["bytes"] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result


def training_memory(
    model: nn.Module, step: Callable[[], object], trainable: list[nn.Parameter], device: str
) -> dict[str, float]:
    """Peak memory of one training step in MiB (measured on CUDA, counted on CPU; see module doc)."""
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    train = sum(p.numel() * p.element_size() for p in trainable)
    out: dict[str, float] = {
        "weights_mib": (frozen + train) / 2**20,
        "trainable_state_mib": 3 * train / 2**20,
    }
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_step_delta_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["peak_mib"] = out["cuda_peak_mib"]
    else:
        with saved_bytes_counter(model) as saved:
            step()
        out["saved_activations_mib"] = saved["bytes"] / 2**20
        out["peak_mib"] = out["weights_mib"] + out["trainable_state_mib"] + out["saved_activations_mib"]
    return out


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-adds of one call (matmuls, convolutions, attention), from PyTorch's flop counter."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() // 2


@contextmanager
def linear_token_counter(model: nn.Module, names: list[str]) -> Iterator[dict[str, tuple[int, int]]]:
    """Record {layer name: (tokens, in_features)} for the named nn.Linear modules during the block."""
    seen: dict[str, tuple[int, int]] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def hook(mod: nn.Module, args: tuple, _name: str = name) -> None:
            x = args[0]
            tokens, width = x.numel() // x.shape[-1], x.shape[-1]
            prev = seen.get(_name, (0, width))[0]
            seen[_name] = (prev + tokens, width)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def call_timer(module: Any, names: dict[str, str]) -> Iterator[dict[str, list[float]]]:
    """Inside the block, every call of ``module.<attr>`` is timed: ``times[key]`` lists the seconds of
    each call, for ``names = {key: attr}``; the module's functions are restored on exit."""
    times: dict[str, list[float]] = {key: [] for key in names}
    real = {key: getattr(module, attr) for key, attr in names.items()}

    def timed(key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real[key](*args, **kwargs)
            finally:
                times[key].append(time.perf_counter() - start)

        return wrapper

    for key, attr in names.items():
        setattr(module, attr, timed(key))
    try:
        yield times
    finally:
        for key, attr in names.items():
            setattr(module, attr, real[key])


def machine_conditions() -> dict[str, object]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "loadavg": list(load) if load else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# -- report ----------------------------------------------------------------------------------------
def ratios(result: dict[str, Any], stat: str = "median_s") -> dict[str, Any]:
    """Time ratios from the medians (stat="min_s": from the least-disturbed samples)."""
    out: dict[str, Any] = {}
    if "train" in result:
        t = {v: r[stat] for v, r in result["train"].items()}
        out["train_vs_base"] = {v: t[v] / t["base"] for v in t}
        out["train_vs_peft_lora"] = {v: t[v] / t["peft_lora"] for v in t}
        out["train_vs_lora"] = {v: t[v] / t["lora"] for v in t}
    i = {v: r[stat] for v, r in result["inference"].items()}
    out["inference_vs_base"] = {v: i[v] / i["base"] for v in i}
    if "base_split" in i:  # the frozen model with the attention split as adapters split it
        out["inference_vs_base_split"] = {v: i[v] / i["base_split"] for v in i}
    return out


def table(name: str, result: dict[str, Any]) -> str:
    """Ratios from medians; in brackets the same ratio from the fastest sample of each variant."""
    r, m = result["ratios"], result["ratios_from_min"]
    floor = result["moram_mac_floor"]
    lines = [f"\n== {name}: {result['info']['what']} ({result['adapted_layers']} adapted layers)"]
    if "train" in result:
        mem = result["train_memory_mib"]
        lines.append(
            f"{'train step':<14}{'median ms':>10}{'x base (min)':>15}{'x peft (min)':>15}"
            f"{'x lora (min)':>15}{'peak MiB':>10}{'MAC floor':>10}"
        )
        for v, t in result["train"].items():
            cells = "".join(
                f"{r[key][v]:>8.3f} ({m[key][v]:.2f})"
                for key in ("train_vs_base", "train_vs_peft_lora", "train_vs_lora")
            )
            fl = f"{floor[v]:.3f}" if v in floor else ""
            lines.append(f"{v:<14}{1e3 * t['median_s']:>10.1f}{cells}{mem[v]['peak_mib']:>10.1f}{fl:>10}")
    split = "inference_vs_base_split" in r
    head = f"{'x split (min)':>15}" if split else ""
    lines.append(f"{'inference':<14}{'median ms':>10}{'x base (min)':>15}{head}{'MAC floor':>10}")
    for v, t in result["inference"].items():
        fl = f"{floor[v]:.3f}" if v in floor else ""
        keys = ("inference_vs_base", "inference_vs_base_split") if split else ("inference_vs_base",)
        cell = "".join(f"{r[key][v]:>8.3f} ({m[key][v]:.2f})" for key in keys)
        lines.append(f"{v:<14}{1e3 * t['median_s']:>10.1f}{cell}{fl:>10}")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """Markdown tables of a saved report (whole models, then per-layer shapes)."""
    out = []
    for name, entry in report["models"].items():
        for label, res in [("whole model", entry["whole_model"])] + list(entry["layers"].items()):
            r, m, floor = res["ratios"], res["ratios_from_min"], res["moram_mac_floor"]
            out.append(
                f"\n#### {name}, {label}: {res['info']['what']} ({res['adapted_layers']} adapted layers)\n"
            )
            out.append(
                "| train step | median ms | x frozen base | x peft LoRA | x our LoRA | peak MiB | MAC floor |"
            )
            out.append("|---|---:|---:|---:|---:|---:|---:|")
            for v, t in res["train"].items():
                cells = " | ".join(
                    f"{r[k][v]:.3f} ({m[k][v]:.2f})"
                    for k in ("train_vs_base", "train_vs_peft_lora", "train_vs_lora")
                )
                mem = res["train_memory_mib"][v]["peak_mib"]
                out.append(
                    f"| {v} | {1e3 * t['median_s']:.1f} | {cells} | {mem:.0f} | {floor.get(v, float('nan')):.3f} |"
                )
            # reports saved before the column existed have no ratio to base_split
            keys = [k for k in ("inference_vs_base", "inference_vs_base_split") if k in r]
            split = " x frozen base, split attention |" if len(keys) == 2 else ""
            out.append(f"\n| inference | median ms | x frozen base |{split} MAC floor |")
            out.append("|---|---:|---:|" + "---:|" * len(keys))
            for v, t in res["inference"].items():
                cells = " | ".join(f"{r[k][v]:.3f} ({m[k][v]:.2f})" for k in keys)
                out.append(f"| {v} | {1e3 * t['median_s']:.1f} | {cells} | {floor.get(v, float('nan')):.3f} |")
    return "\n".join(out).replace("| nan |", "| |")
