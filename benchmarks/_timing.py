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
