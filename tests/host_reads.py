"""`HostReads`: which computed tensors a block of code reads back to the host.

A read (``item``, ``float``, ``bool``, ``tolist``, ``nonzero``, a boolean-mask index, ...) makes the
host wait for the device on a GPU. On the CPU nothing waits, but the same calls show where a GPU
would: the tests count them. Tensors the data order draws on the host (``randperm``) and reads made
by ``torch.optim`` (Adam's step counters are CPU tensors even beside parameters on a GPU) are left out,
and so are reads made by the files named in ``ignore`` (e.g. transformers' ``masking_utils.py``, which
reads the padding mask in every forward to decide whether SDPA can skip it: transformers' own, not ours).
"""

from __future__ import annotations

import sys

import torch
from torch.overrides import TorchFunctionMode

# transformers' mask helpers read the padding mask in every forward (``padding_mask.all()``)
MASKING = ("transformers/masking_utils.py",)
READS = {
    "item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu",
    "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
}  # fmt: skip


def _bool_index(args: tuple) -> bool:
    return len(args) > 1 and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
    )


class HostReads(TorchFunctionMode):
    """Counts reads of computed tensors while `active`."""

    def __init__(self, ignore: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.ignore = ("torch/optim/", *ignore)
        self.active = False
        self.reads: list[str] = []
        self.host_drawn: set[int] = set()  # ids of tensors the data order draws on the host
        self._keep: list[torch.Tensor] = []  # ...kept alive, so that no later tensor gets their id

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        if name == "randperm":
            self.host_drawn.add(id(out))
            self._keep.append(out)
        elif self.active and args and isinstance(args[0], torch.Tensor) and id(args[0]) not in self.host_drawn:
            if name in READS or (name in ("__getitem__", "__setitem__") and _bool_index(args)):
                caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
                if not any(part in caller for part in self.ignore):
                    self.reads.append(name)
        return out
