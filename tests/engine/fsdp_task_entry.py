"""Entry point of tests/engine/test_engine_ddp.py::test_task_fsdp_*: ``torchrun ... fsdp_task_entry.py OUT``.

Each of 2 ranks trains the same small model of repeated blocks (a frozen base and a trainable
factor per block, a trainable 0-d scale, a head) with `TaskFSDP` on its own input, over two optimizer
steps of 2 accumulated micro-batches each, then releases it, adds a new trainable factor per block (a
"second task") and shards again for one more step. It writes to ``OUT/rank<r>.pt`` what it saw: the
local shapes while sharded, the full parameters after every step (gathered), the model's classes and
parameter types after `release`, and the final state dict.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from rankwise.engine.fsdp import TaskFSDP, full_tensors


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.base.requires_grad_(False)
        self.factor = nn.Parameter(torch.randn(6, 4) * 0.3)  # 6 rows: 3 per rank
        self.extra = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x) + (x @ self.factor.T).sum(-1, keepdim=True)
        if self.extra is not None:
            out = out + x @ self.extra
        return torch.tanh(out)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.scale = nn.Parameter(torch.tensor(1.5))  # 0-d: FSDP2 cannot shard it
        self.head = nn.Linear(4, 2)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return (self.head(x) * self.scale).pow(2).mean()


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = Model()
    inputs = torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(10 + rank))  # (step, micro, n, d)
    seen: dict = {"steps": []}

    def train(steps: range, first: bool) -> None:
        step = TaskFSDP(model, model.loss, torch.device("cpu"))
        params = [p for p in model.parameters() if p.requires_grad]
        if first:
            seen["units"] = step.units
            seen["local_factor"] = tuple(model.blocks[0].factor.to_local().shape)
            seen["local_base"] = tuple(model.blocks[0].base.weight.to_local().shape)
            seen["local_head"] = tuple(model.head.weight.to_local().shape)
        for it in steps:
            for p in params:
                p.grad = None
            for micro in range(2):
                with step.sync(last=micro == 1):
                    step(inputs[it, micro]).div(2).backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= 0.1 * p.grad
            seen["steps"].append(full_tensors({n: p.detach().clone() for n, p in model.named_parameters()}))
        step.release()

    train(range(2), first=True)
    seen["classes"] = [type(m).__name__ for m in model.modules()]
    seen["plain"] = all(type(p) is nn.Parameter and not hasattr(p, "to_local") for p in model.parameters())
    for block in model.blocks:  # the next task's new tensors
        block.factor.requires_grad_(False)
        block.extra = nn.Parameter(torch.full((4, 4), 0.05))
    train(range(2, 3), first=False)
    seen["final"] = {n: p.detach().clone() for n, p in model.state_dict().items()}
    torch.save(seen, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
