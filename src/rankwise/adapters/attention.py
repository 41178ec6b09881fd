"""nn.MultiheadAttention with separate q / k / v projections, so each can carry an adapter.

open_clip and OpenAI CLIP fuse the three input projections into one ``in_proj_weight`` and never call
``out_proj.forward``; adapters on them would be silently ignored. `SplitMultiheadAttention` computes the
same function (same signature, masks, batch_first, dropout) with four nn.Linear modules, and
`to_fused()` turns it back into an nn.MultiheadAttention after merging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitMultiheadAttention(nn.Module):
    """Drop-in replacement of an nn.MultiheadAttention: q_proj, k_proj, v_proj, out_proj as nn.Linear."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise NotImplementedError(
                "splitting nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported"
            )
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.head_dim = e, mha.num_heads, mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first
        has_bias = mha.in_proj_bias is not None
        w = mha.in_proj_weight
        weights = (
            (w[:e], w[e : 2 * e], w[2 * e :])
            if w is not None
            else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        )
        biases = mha.in_proj_bias.chunk(3) if has_bias else (None, None, None)
        for name, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases):
            linear = nn.Linear(weight.shape[1], e, bias=has_bias, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if has_bias:
                    linear.bias.copy_(bias)
            linear.weight.requires_grad_(weight.requires_grad)
            if has_bias:
                linear.bias.requires_grad_(bias.requires_grad)
            setattr(self, name, linear)
        self.out_proj = mha.out_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:  # internal layout is (L, B, E), as in nn.MultiheadAttention
            # contiguous: a strided input with a frozen weight takes a slow broadcast-bmm path in F.linear;
            # one copy per distinct tensor (self-attention passes the same one three times)
            copies: dict[int, torch.Tensor] = {}
            for t in (query, key, value):
                if id(t) not in copies:
                    copies[id(t)] = t.transpose(0, 1).contiguous()
            query, key, value = (copies[id(t)] for t in (query, key, value))
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        q = self._heads(self.q_proj(query), bsz)
        k = self._heads(self.k_proj(key), bsz)
        v = self._heads(self.v_proj(value), bsz)
        mask = self._combined_mask(
            attn_mask, key_padding_mask, is_causal, bsz, tgt_len, src_len, q.dtype, q.device
        )
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, dim=-1)
            weights = attn.mean(dim=1) if average_attn_weights else attn
            out = F.dropout(attn, p=dropout_p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _heads(self, x: torch.Tensor, bsz: int) -> torch.Tensor:
        return x.reshape(x.shape[0], bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def _combined_mask(self, attn_mask, key_padding_mask, is_causal, bsz, tgt_len, src_len, dtype, device):
        """One additive float mask of shape broadcastable to (B, H, L, S), or None."""
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).triu(1)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            mask = (
                mask.view(bsz, self.num_heads, tgt_len, src_len)
                if mask.dim() == 3
                else mask.view(1, 1, tgt_len, src_len)
            )
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, dtype).view(bsz, 1, 1, src_len)
            mask = pad if mask is None else mask + pad
        return mask

    @torch.no_grad()
    def to_fused(self) -> nn.MultiheadAttention:
        """An nn.MultiheadAttention with the current q/k/v/out weights (q/k/v must be plain nn.Linear)."""
        for name in ("q_proj", "k_proj", "v_proj"):
            if type(getattr(self, name)) is not nn.Linear:
                raise TypeError(f"{name} still carries an adapter; merge and unload it before fusing")
        q, k, v = self.q_proj, self.k_proj, self.v_proj
        has_bias = q.bias is not None
        mha = nn.MultiheadAttention(
            self.embed_dim,
            self.num_heads,
            dropout=self.dropout,
            bias=has_bias,
            kdim=k.in_features,
            vdim=v.in_features,
            batch_first=self.batch_first,
            device=q.weight.device,
            dtype=q.weight.dtype,
        )
        if mha.in_proj_weight is not None:
            mha.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        else:
            mha.q_proj_weight.copy_(q.weight)
            mha.k_proj_weight.copy_(k.weight)
            mha.v_proj_weight.copy_(v.weight)
        if has_bias:
            mha.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        mha.out_proj = self.out_proj
        return mha


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
