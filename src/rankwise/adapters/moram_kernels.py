"""MoRAM's top-k value sum with a backward that only touches the live atoms (used by moram.py).

out[n] = sum_j coef[n, j] * values[index[n, j]] as one ``embedding_bag``; same outputs as the dense
formula ``(p * w) @ B_all^T`` restricted to the k routed atoms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _coef_grad(grad: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """d out / d coef[n, j] = <grad[n], values[index[n, j]]>, without materialising values[index]."""
    n, k = index.shape
    try:
        offsets = torch.arange(0, n * k, k, device=index.device)
        offset2bag = torch.arange(n, device=index.device).repeat_interleave(k)
        flat = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad, values, index.reshape(-1), offsets, offset2bag, 0
        )
        return flat.view(n, k)
    except (AttributeError, RuntimeError):  # pragma: no cover - private op missing: dense fallback
        return (grad @ values.t()).gather(1, index)


class _TopKValues(torch.autograd.Function):
    """out[n] = sum_j coef[n, j] * values[index[n, j]], values = [bank_BT; live_BT] (R, d_out).

    The backward returns the gradient of the r live rows only (one (r, N) x (N, d_out) matmul), not
    of all R rows as embedding_bag's own backward does, and never differentiates the frozen bank.
    """

    @staticmethod
    def forward(ctx, index, coef, bank_BT, live_BT):  # type: ignore[override]
        if live_BT is None:
            values = bank_BT
        else:
            values = torch.cat([bank_BT, live_BT]) if bank_BT.shape[0] else live_BT.contiguous()
        ctx.save_for_backward(index, coef, values)
        ctx.bank = bank_BT.shape[0]
        return F.embedding_bag(index, values, per_sample_weights=coef, mode="sum")

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        index, coef, values = ctx.saved_tensors
        grad = grad.contiguous()
        grad_coef = _coef_grad(grad, values, index) if ctx.needs_input_grad[1] else None
        grad_live = None
        if ctx.needs_input_grad[3]:
            dense = torch.zeros(index.shape[0], values.shape[0], dtype=coef.dtype, device=coef.device)
            live = dense.scatter_(1, index, coef)[:, ctx.bank :]
            grad_live = live.t() @ grad
        return None, grad_coef, None, grad_live
