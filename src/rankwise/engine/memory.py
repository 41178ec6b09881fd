"""Cheap memory estimates made before allocating, so that an impossible ``r`` or ``batch_size`` is one
clear line instead of a crash (or the kernel's OOM killer).

Both estimates are lower bounds of what a run needs; a run is refused only when even the lower bound
exceeds the memory available (``MemAvailable`` of /proc/meminfo, capped by ``RLIMIT_AS``, on CPU;
``torch.cuda.mem_get_info`` on CUDA):

* adapters: ``bytes = sum_l 4 e n_l + k_l`` over the targeted linear layers ``l`` (q/k/v/out of a
  targeted nn.MultiheadAttention count as four), with ``e`` the element size of the model's weights,
  ``n_l`` the trainable elements of the task (each with a gradient and two Adam moments) and ``k_l``
  the bytes kept of the ``T - 1`` earlier tasks, both from the method's `AdapterConfig.layer_memory`
  (LoRA / CoDyRA: ``n = r (in + out)``, ``k = 0``; MoRAM: ``k = (T - 1) r (in + out) e``);
* a training micro-batch: ``bytes = B * (b_2 - b_1 + 64)``, where ``b_n`` is the size of the tensors
  `collate` makes from ``n`` examples of the first task (the difference drops per-task parts such as
  class prompts) and 64 bytes per example is the host-side index list. Activations come on top.
"""

from __future__ import annotations

import os
import random
import resource
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rankwise.errors import ConfigError

GIB = 2**30
HOST_BYTES_PER_EXAMPLE = 64  # list slot + int index + example reference, rounded up


def available_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes that can still be allocated on `device`, where that number comes from)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 2**62
    where = "available in host memory"
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < avail:
        avail, where = soft, "allowed by the address-space limit (ulimit -v)"
    return int(avail), where


def adapted_shapes(model: nn.Module, adapter_config: Any) -> list[tuple[int, int]]:
    """(in_features, out_features) of every linear `adapter_config` targets in `model` (q/k/v/out of a
    targeted nn.MultiheadAttention count as four linears, as the attention split makes them)."""
    from rankwise.adapters.inject import SPLIT_NAMES, matches, resolve_targets

    targets = resolve_targets(adapter_config)
    exclude = adapter_config.exclude_modules

    def wanted(name: str) -> bool:
        return matches(name, targets) and not matches(name, exclude)

    shapes = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            e = module.embed_dim
            ins = {"q_proj": e, "k_proj": module.kdim, "v_proj": module.vdim, "out_proj": e}
            shapes += [(ins[c], e) for c in SPLIT_NAMES if wanted(f"{name}.{c}")]
        elif isinstance(module, nn.Linear) and wanted(name):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            if not isinstance(parent, nn.MultiheadAttention):  # counted with its attention above
                shapes.append((module.in_features, module.out_features))
    return shapes


def adapter_widths(model: nn.Module, adapter_config: Any) -> int:
    """sum over the layers `adapter_config` targets of (in_features + out_features)."""
    return sum(i + o for i, o in adapted_shapes(model, adapter_config))


def adapter_bytes(shapes: list[tuple[int, int]], adapter_config: Any, num_tasks: int, element: int) -> tuple[int, int, int]:
    """(trainable elements, bytes that must exist, bytes that may exist on top) while the last of
    `num_tasks` tasks trains: each layer's `AdapterConfig.layer_memory`, trainable tensors counted
    four times (factors, gradients, two Adam moments)."""
    trainable = need = extra = 0
    for i, o in shapes:
        layer = adapter_config.layer_memory(i, o, max(num_tasks, 1) - 1, element)
        trainable += layer.trainable
        need += 4 * layer.trainable * element + layer.kept_bytes
        extra += layer.peak_extra_bytes
    return trainable, need, extra


def check_adapter_memory(model: nn.Module, adapter_config: Any, num_tasks: int, device: torch.device) -> None:
    """Refuse (ConfigError on ``method.r``) adapters whose estimated size exceeds the available memory."""
    shapes = adapted_shapes(model, adapter_config)
    first = next(model.parameters(), None)
    element = first.element_size() if first is not None else 4
    trainable, need, _ = adapter_bytes(shapes, adapter_config, num_tasks, element)
    kept = need - 4 * trainable * element
    avail, where = available_bytes(device)
    if need > avail:
        widths = sum(i + o for i, o in shapes)
        raise ConfigError(
            "method.r",
            adapter_config.r,
            f"a rank whose adapters fit in memory: r={adapter_config.r} over layers of total width "
            f"{widths:,} needs at least {need / GIB:,.1f} GiB (factors, gradients and Adam moments"
            f"{f', and {kept / GIB:,.1f} GiB kept of earlier tasks' if kept else ''}) but "
            f"{avail / GIB:,.1f} GiB is {where}",
        )


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable in `obj` (dicts, lists, tuples, dataclasses), each counted once."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return sum(_tensor_bytes(getattr(obj, f.name), seen) for f in fields(obj))
    return 0


def batch_bytes_per_example(backbone: Any, task: Any) -> int:
    """Bytes one more training example adds to a collated batch: collate(2) - collate(1).

    Runs with every random generator saved and restored (training augmentation draws from them),
    so the run's numbers do not change.
    """
    if not task.train:
        return 0
    examples = [task.train[0], task.train[min(1, len(task.train) - 1)]]
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            one = _tensor_bytes(backbone.collate(examples[:1], task, True))
            two = _tensor_bytes(backbone.collate(examples, task, True))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return max(two - one, 0)


def check_batch_memory(backbone: Any, tasks: list[Any], batch_size: int, device: torch.device) -> None:
    """Refuse (ConfigError on ``train.batch_size``) a micro-batch whose inputs alone cannot fit."""
    if not tasks:
        return
    per_example = batch_bytes_per_example(backbone, tasks[0])
    host = torch.device("cpu")
    if device.type == "cuda":  # the batch on the device, the index list on the host
        checks = [(batch_size * per_example, device), (batch_size * HOST_BYTES_PER_EXAMPLE, host)]
    else:
        checks = [(batch_size * (per_example + HOST_BYTES_PER_EXAMPLE), device)]
    for need, dev in checks:
        avail, where = available_bytes(dev)
        if need > avail:
            raise ConfigError(
                "train.batch_size",
                batch_size,
                f"a micro-batch that fits in memory: {batch_size:,} examples of task {tasks[0].name!r} need at "
                f"least {need / GIB:,.1f} GiB ({per_example:,} bytes of tensors + {HOST_BYTES_PER_EXAMPLE} "
                f"bytes of index per example, before activations) but {avail / GIB:,.1f} GiB is {where}",
            )
