"""Entry point of tests/engine/test_engine_ddp.py::test_task_ddp_*: ``torchrun ... ddp_task_entry.py OUT``.

Each of 2 ranks runs `TaskDDP` on the same small model with its own input, over two optimizer steps
of 2 accumulated micro-batches, and writes what it saw to ``OUT/rank<r>.pt``: the gradients after a
no_sync micro-batch (local) and after the last one (averaged), and whether a DistributedDataParallel
did the work.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from rankwise.engine import distributed as ddp

dist.init_process_group("gloo")
rank = dist.get_rank()
ctx = ddp.DistContext(2, rank, rank)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
model[0].bias.requires_grad_(False)  # frozen tensors are not DDP's
unused = nn.Linear(2, 2)  # a trainable tensor outside the loss: find_unused
model.add_module("head", unused)
params = [p for p in model.parameters() if p.requires_grad]
inputs = torch.randn(2, 2, 5, 4, generator=torch.Generator().manual_seed(10 + rank))  # (micro, step, n, d)


def loss(x: torch.Tensor) -> torch.Tensor:
    return model[2](model[1](model[0](x))).pow(2).mean()


step = ddp.TaskDDP(model, loss, params, ctx, torch.device("cpu"), find_unused=True)
seen = {"wrapped": type(step._ddp).__name__}
for it in range(2):
    for p in params:
        p.grad = None
    for micro in range(2):
        with step.sync(last=micro == 1):
            step(inputs[micro, it]).div(2).backward()
        seen[f"step{it}_micro{micro}"] = [None if p.grad is None else p.grad.clone() for p in params]
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= 0.1 * p.grad
torch.save(seen, f"{sys.argv[1]}/rank{rank}.pt")
try:
    ddp.TaskDDP(model, loss, params[:1], ctx, torch.device("cpu"))
except Exception as exc:  # the optimizer's tensors must be the trainable ones
    torch.save(str(exc), f"{sys.argv[1]}/refusal{rank}.pt")
dist.destroy_process_group()
