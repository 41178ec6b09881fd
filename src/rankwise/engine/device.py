"""The one place that chooses the device and seeds / captures / restores every RNG.

Reproducibility contract: `seed_everything(seed)` before building the backbone; the engine saves
`rng_state()` with every snapshot and calls `set_rng_state` on resume, so dropout masks and adapter
initialisations after a resume are the ones an uninterrupted run would have drawn. Data order never
uses the global RNGs: `data_generator(seed, task, epoch)` derives a private generator.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

from rankwise.errors import ConfigError


def choose_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; an explicit device must exist.

    Under a multi-process launcher (`local_rank` given), ``auto`` / ``cuda`` mean this process's
    GPU, ``cuda:<local_rank>``, which also becomes the current CUDA device.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", spec, "'cpu' or 'auto' (no CUDA device is available)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", spec, "'cpu' or 'auto' (MPS is not available)")
    if device.type == "cuda" and local_rank is not None:
        if device.index is None:
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    "device",
                    spec,
                    f"'cpu', or at most {torch.cuda.device_count()} processes per node "
                    f"(LOCAL_RANK={local_rank} has no GPU)",
                )
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (``None`` keeps torch's default); the engine calls it once per run.

    On a small or shared CPU machine the default (one thread per core) oversubscribes: tiny models
    ran 20x slower per step with 2 threads than with 1 on a loaded 2-core machine. Under torchrun
    every process gets its own pool, so use about cores / processes.
    """
    if threads is None:
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError("threads", threads, "a positive integer or null (torch's default)")
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: object) -> int:
    """A 63-bit seed that depends on every part (stable across processes, unlike hash())."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def data_generator(seed: int, task_index: int, epoch: int) -> torch.Generator:
    """Private generator for the data order of one epoch of one task."""
    return torch.Generator().manual_seed(derived_seed("data", seed, task_index, epoch))


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of every global RNG state."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "python": [version, list(mt), gauss],
        "numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
    }
    if meta["cuda_devices"]:
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    return meta, tensors


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `rng_state`."""
    version, mt, gauss = meta["python"]
    random.setstate((version, tuple(mt), gauss))
    np_kind, np_pos, np_has_gauss, np_gauss = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((np_kind, keys, np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    if meta.get("cuda_devices") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"cuda.{i}"] for i in range(meta["cuda_devices"])])
