"""MoRAM: a growing bank of rank-1 experts that decide their own relevance per token.

(Published first as "MoRA", arXiv 2506.21035; not the unrelated "MoRA: High-Rank Updating".)

After t tasks a layer holds R = t * r rank-1 atoms: keys A_all (R, d_in), values B_all (d_out, R).
Each task trains r new atoms; earlier atoms are frozen, never merged, never deleted. Per token x:

    p = A_all dropout(x)                         key responses (R,)
    s = p / max(||p||_2, 1e-12)                  signed, normalised over all atoms
    k = min(max(top_k, 2), R)                    activation budget
    w = softmax(topk(s, k) / tau)                other atoms get weight 0
    w = w * 1[s >= delta]                        inference only ("rank pruning"), not renormalised;
                                                 delta <= 0 switches it off (official `threshold > 0`)
    y = W x + b + B_all (p * w)                  weights multiply the raw p, not s

The current task's values are scaled by ``lora_alpha / r`` while training; when frozen they are stored
already scaled, so old atoms keep contributing exactly what they contributed while trained. Fresh atoms
are created at ``begin_task``, so untrained atoms never compete for the budget at evaluation.

``compat="official_trace"`` (or the fine-grained fields) reproduces the official TRACE code instead
(TRACE/utils/my_peft/tuners/moram.py ``increment_task``, TRACE/model/Regular/MoRAM.py ``save_model``,
TRACE/training/main.py): frozen values stored unscaled (old atoms then give 1/scaling of what they gave
while trained), the next task's atoms created at ``end_task`` (A kaiming, B = 0) and taking part in
routing from then on, and one optimizer for the whole run (``keep_optimizer``, applied by the engine).
The official X-TAIL code (XTAIL/loralib/moram.py, scaling 1, atoms created when a task begins, a fresh
AdamW per task) already behaves as the rankwise defaults.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rankwise.adapters.base import (
    AdapterConfig,
    AdapterLayer,
    AdapterStateError,
    expect_tensor,
    kaiming_rows,
    meta_bool,
    meta_int_list,
)
from rankwise.adapters.moram_kernels import _coef_grad, _TopKValues  # noqa: F401 (older import path)
from rankwise.errors import ConfigError

COMPAT_MODES = ("rankwise", "official_trace")
FROZEN_VALUES = ("scaled", "unscaled")
FRESH_ATOMS = ("begin_task", "end_task")
_BUDGET_WARNED: set[tuple[int, int]] = set()  # (budget, bank size) pairs already warned about


@dataclass
class MoRAMConfig(AdapterConfig):
    """MoRAM defaults are the CLIP ones (r = 16, tau = 0.01); LLMs use r = 8, lora_alpha = 16, tau = 0.03."""

    method = "moram"
    inference_options = ("top_k", "tau", "delta")
    #: each task adds r atoms to a frozen bank kept for the rest of the run (memory estimates count it)
    bank_grows_per_task = True

    top_k: int | None = field(
        default=None,
        metadata={"help": "activation budget k (atoms with non-zero weight per token); None means r"},
    )
    tau: float = field(default=0.01, metadata={"help": "softmax temperature over the top-k scores"})
    delta: float = field(
        default=0.2,
        metadata={
            "help": "inference-only pruning: atoms with score s < delta get weight 0; delta <= 0 switches "
            "pruning off (the official `lora_threshold > 0` test)"
        },
    )
    compat: str = field(
        default="rankwise",
        metadata={
            "help": "'rankwise' (default) or 'official_trace': the official TRACE MoRAM code's behaviour, i.e. "
            "frozen_values='unscaled', fresh_atoms='end_task', keep_optimizer=True; a fine-grained field "
            "set explicitly wins over compat"
        },
    )
    frozen_values: str | None = field(
        default=None,
        metadata={
            "help": "'scaled': a finished task's values are stored times lora_alpha / r, as they acted while "
            "trained; 'unscaled': stored raw, as official TRACE does (old atoms then give 1/scaling of "
            "their trained output); None: from compat"
        },
    )
    fresh_atoms: str | None = field(
        default=None,
        metadata={
            "help": "'begin_task': a task's new atoms are drawn when it begins; 'end_task': drawn when the "
            "previous task ends (A kaiming, B = 0) and routed at evaluation, as official TRACE does; "
            "None: from compat"
        },
    )

    def __post_init__(self) -> None:
        if self.compat not in COMPAT_MODES:
            raise ConfigError("compat", self.compat, "one of " + ", ".join(repr(m) for m in COMPAT_MODES))
        official = self.compat == "official_trace"
        if self.frozen_values is None:
            self.frozen_values = "unscaled" if official else "scaled"
        if self.fresh_atoms is None:
            self.fresh_atoms = "end_task" if official else "begin_task"
        if self.keep_optimizer is None:
            self.keep_optimizer = official
        super().__post_init__()
        if self.frozen_values not in FROZEN_VALUES:
            raise ConfigError(
                "frozen_values", self.frozen_values, "one of " + ", ".join(map(repr, FROZEN_VALUES)) + " or None"
            )
        if self.fresh_atoms not in FRESH_ATOMS:
            raise ConfigError(
                "fresh_atoms", self.fresh_atoms, "one of " + ", ".join(map(repr, FRESH_ATOMS)) + " or None"
            )
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ConfigError("top_k", self.top_k, "an integer >= 1 (values below 2 act as 2) or None (= r)")
        if not isinstance(self.tau, (int, float)) or self.tau <= 0:
            raise ConfigError("tau", self.tau, "a number > 0")
        if not isinstance(self.delta, (int, float)) or not -1.0 <= self.delta <= 1.0:
            raise ConfigError("delta", self.delta, "a number in [-1, 1] (scores are cosine-like)")

    @property
    def budget(self) -> int:
        return max(self.r if self.top_k is None else self.top_k, 2)


class MoRAMLinear(AdapterLayer):
    """Base linear plus a bank of rank-1 atoms routed by their own normalised key responses.

    The frozen bank is kept as ``bank_A`` (R, d_in) and ``bank_BT`` (R, d_out), both contiguous, so a
    forward never re-concatenates or transposes it; ``bank_B`` is the (d_out, R) view of ``bank_BT``.
    Only k of the R atoms carry weight, so the value side sums k rows of ``bank_BT`` per token
    (``embedding_bag`` with per-token weights, N k d_out multiply-adds instead of N R d_out); when the
    budget covers the whole bank (k = R) it is one dense matmul. The outputs equal the dense formula.
    """

    mergeable = False
    merge_refusal = (
        "MoRAM cannot be merged: each token's mixture of atoms depends on the input, so no fixed weight "
        "matrix reproduces it. Keep the adapter (save_pretrained) instead."
    )
    records_activations = True
    #: state that only counts activations and never changes an output; prompt-feature caches ignore it
    statistics_state = ("atom_hits", "tokens_count", "track_activations")

    def __init__(self, base_layer: nn.Linear, config: MoRAMConfig) -> None:
        super().__init__(base_layer, config)
        self.budget = config.budget
        self.tau = float(config.tau)
        self.delta_threshold = float(config.delta)
        self.frozen_scaled = config.frozen_values == "scaled"
        self.fresh_at_end = config.fresh_atoms == "end_task"
        like = self._factor_like()
        self.register_buffer("bank_A", like.new_zeros(0, self.in_features), persistent=False)
        self.register_buffer("bank_BT", like.new_zeros(0, self.out_features), persistent=False)
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.task_sizes: list[int] = []
        self.track_activations = False
        self.register_buffer(
            "atom_hits", torch.zeros(0, dtype=torch.float64, device=like.device), persistent=False
        )
        # a tensor, not a Python int: torch.compile guards on integer attributes, so an int counter
        # would recompile the layer at every tracked evaluation batch
        self.register_buffer(
            "tokens_count", torch.zeros((), dtype=torch.int64, device=like.device), persistent=False
        )

    @property
    def bank_B(self) -> torch.Tensor:
        """Frozen values as (d_out, R) (a transposed view of the contiguous ``bank_BT``)."""
        return self.bank_BT.t()

    @bank_B.setter
    def bank_B(self, value: torch.Tensor) -> None:
        self.bank_BT = value.t().contiguous()

    @property
    def tokens_seen(self) -> int:
        """Tokens counted since `reset_activation_stats` (evaluation forwards with tracking on)."""
        return int(self.tokens_count)

    @tokens_seen.setter
    def tokens_seen(self, value: int) -> None:
        self.tokens_count.fill_(int(value))

    @property
    def num_atoms(self) -> int:
        return self.bank_A.shape[0] + (0 if self.lora_A is None else self.lora_A.shape[0])

    def has_delta(self) -> bool:
        return self.num_atoms > 0

    def apply_inference_options(self, config: MoRAMConfig) -> None:
        self.set_inference_options(config.budget, config.tau, config.delta)

    def set_inference_options(self, budget: int, tau: float, delta: float) -> None:
        """Set the routing options (validated by `RankwiseModel.set_inference_options`)."""
        self.budget, self.tau, self.delta_threshold = int(budget), float(tau), float(delta)

    # -- forward -------------------------------------------------------------------------------
    def _key_responses(self, x: torch.Tensor) -> torch.Tensor:
        """p = A_all x as (N, R). With a live task the bank and the new atoms are two matmuls, so the
        backward computes the weight gradient of the r trainable rows only, not of all R."""
        if self.lora_A is None:
            return F.linear(x, self.bank_A)
        p_new = F.linear(x, self.lora_A)
        if not self.bank_A.shape[0]:
            return p_new
        # One matmul over [bank; live] with a custom backward (fewer kernels in training) changes the
        # float rounding of the input gradient, so published runs would no longer re-run bit for bit
        return torch.cat([F.linear(x, self.bank_A), p_new], dim=-1)

    def _live_values(self) -> torch.Tensor:
        """The live task's values, scaled, as an (r, d_out) view."""
        return (self.lora_B * self.scaling if self.scaling != 1.0 else self.lora_B).t()

    def _values_by_atom(self) -> torch.Tensor:
        """B_all^T as (R, d_out): the bank itself, or bank + scaled live values."""
        if self.lora_B is None:
            return self.bank_BT
        new = self._live_values()
        if not self.bank_BT.shape[0]:
            return new
        return torch.cat([self.bank_BT, new])

    def _weights(self, p: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        s = p / norm  # = F.normalize(p) on these entries (same ops, same rounding)
        w = torch.softmax(s / self.tau, dim=-1)
        if not self.training and self.delta_threshold > 0:
            w = w * (s >= self.delta_threshold)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if x.is_contiguous() else x.contiguous()  # see AdapterLayer.forward; the keys reuse it
        shape = (*x.shape[:-1], self.out_features)
        # (N, d_out) and not a view, so the in-place adds below stay cheap in backward; base and keys
        # read x through views of their own (see AdapterLayer.forward)
        out = self.base_output(x.reshape(-1, self.in_features))
        if not self.has_delta():
            return out.view(shape)
        return self._mix(x.reshape(-1, self.in_features), out).view(shape)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)

    def _mix(self, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """delta(x), or out + delta(x) with the addition folded into the value matmul when out is given."""
        dtype = (self.bank_A if self.lora_A is None else self.lora_A).dtype
        flat = self.dropout(x).to(dtype).reshape(-1, self.in_features)
        p = self._key_responses(flat)
        num_atoms = p.shape[-1]
        k = min(self.budget, num_atoms)
        if k < self.budget and not torch.compiler.is_compiling():  # a Python warning would break the graph
            _warn_budget(self.budget, num_atoms)
        norm = torch.linalg.vector_norm(p, dim=-1, keepdim=True).clamp_min(1e-12)
        fuse = out is not None and out.dtype == dtype
        if k < num_atoms and self._prunes(p):
            if out is not None:
                return self._pruned_delta(p, norm, k, out)
            delta = self._pruned_delta(p, norm, k, None)
        elif k == num_atoms:  # the budget covers every atom: one dense matmul is cheapest
            w = self._weights(p, norm)
            if self.track_activations and not self.training:
                self._count(w)
            values = self._values_by_atom()
            if fuse:  # in place into the fresh base output (its backward does not need it)
                return out.addmm_(p * w, values)
            delta = (p * w) @ values
        else:  # only k atoms per token carry weight: sum k rows of values
            top_p, index = p.topk(k, dim=-1)
            w = self._weights(top_p, norm)
            if self.track_activations and not self.training:
                self._count(torch.zeros_like(p).scatter_(-1, index, w))
            live = None if self.lora_B is None else self._live_values()
            values_dtype = self.bank_BT.dtype if live is None else live.dtype
            # autocast leaves p in bf16 while the values stay float32; embedding_bag needs one dtype
            delta = _TopKValues.apply(index, (top_p * w).to(values_dtype), self.bank_BT, live)
            if fuse:
                return out.add_(delta)
        delta = delta.reshape(*x.shape[:-1], self.out_features)
        return delta if out is None else out + delta.to(out.dtype)

    def _prunes(self, p: torch.Tensor) -> bool:
        """Inference with rank pruning and no gradient: only the atoms that survive the pruning are read."""
        return not self.training and self.delta_threshold > 0 and not p.requires_grad and not torch.compiler.is_compiling()

    def _pruned_delta(self, p: torch.Tensor, norm: torch.Tensor, k: int, out: torch.Tensor | None) -> torch.Tensor:
        """``out + delta`` (`out` (N, d_out) or None) summing the (token, atom) pairs of non-zero weight only.

        With pruning an atom counts only where its score s >= delta. A token whose largest score is
        below delta gets nothing, so the top-k runs only over the tokens with some score >= delta; and
        since a token's scores are a unit vector, at most 1 / delta^2 of its k atoms survive (25 for
        delta = 0.2). One ``embedding_bag`` sums the surviving pairs' value rows per token that has any
        (instead of k rows for every token) and ``index_add_`` adds those rows into `out` in place (no
        temporary of the whole (N, d_out) output). The dropped terms are exact zeros and the additions
        are the top-k path's, so the output is the same to the bit. Only for k < R: with k = R (one
        task) the dense product stays, whose float rounding earlier runs were made with."""
        values = self._values_by_atom()
        if out is None:
            out = torch.zeros(p.shape[0], values.shape[1], dtype=values.dtype, device=values.device)
        # max_j fl(p_j / norm) = fl(max_j p_j / norm) (rounding is monotone): the same test as the mask's
        tokens = (p.amax(dim=-1, keepdim=True) / norm >= self.delta_threshold).view(-1).nonzero().squeeze(1)
        top_p, index = p[tokens].topk(k, dim=-1)
        w = self._weights(top_p, norm[tokens])
        if self.track_activations:  # the (N, R) weights, zero for the skipped tokens
            picked = torch.zeros(len(tokens), p.shape[-1], dtype=w.dtype, device=w.device).scatter_(-1, index, w)
            self._count(torch.zeros_like(p, dtype=w.dtype).index_copy_(0, tokens, picked))
        coef = top_p * w
        survives = coef != 0
        kept = survives.view(-1).nonzero().squeeze(1)  # row-major: grouped by token
        atoms = index.view(-1)[kept]
        counts = survives.sum(dim=-1)
        rows_with = counts.nonzero().squeeze(1)
        bag_sizes = counts[rows_with]
        weights = coef.view(-1)[kept].to(values.dtype)  # autocast may leave p in bf16
        sums = F.embedding_bag(atoms, values, bag_sizes.cumsum(0) - bag_sizes, mode="sum", per_sample_weights=weights)
        return out.index_add_(0, tokens[rows_with], sums.to(out.dtype))

    @torch.no_grad()
    def _count(self, w: torch.Tensor) -> None:
        if self.atom_hits.numel() != w.shape[-1]:
            hits = torch.zeros(w.shape[-1], dtype=torch.float64, device=w.device)
            hits[: self.atom_hits.numel()] = self.atom_hits
            self.atom_hits = hits
        flat = w.reshape(-1, w.shape[-1])
        self.atom_hits += (flat > 0).sum(0).double()
        self.tokens_count += flat.shape[0]

    def reset_activation_stats(self) -> None:
        self.atom_hits = torch.zeros(self.num_atoms, dtype=torch.float64, device=self.bank_A.device)
        self.tokens_seen = 0

    def combine_activation_stats(self, sum_over_processes: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """After a sharded evaluation: hits and tokens seen become their sums over processes
        (``sum_over_processes(t)`` returns the elementwise sum of every process's `t`)."""
        self.atom_hits = sum_over_processes(self.atom_hits.detach().clone())
        seen = torch.tensor([float(self.tokens_seen)], dtype=torch.float64, device=self.atom_hits.device)
        self.tokens_seen = int(sum_over_processes(seen).item())

    def begin_task(self) -> None:
        """Draw this task's r atoms (A kaiming, B = 0), or train the ones drawn at the last end_task."""
        super().begin_task()
        if self.lora_A is None:
            self._draw_atoms()

    def _draw_atoms(self) -> None:
        like = self._factor_like()
        self.lora_A = nn.Parameter(kaiming_rows(self.r, self.in_features, like))
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, self.r, dtype=like.dtype, device=like.device)
        )

    def end_task(self) -> None:
        """Freeze this task's atoms into the bank, values times lora_alpha / r (``frozen_values='scaled'``)
        or raw (``'unscaled'``). By default fresh atoms come at begin_task, so zero-valued untrained
        atoms never compete for the top-k budget at evaluation; ``fresh_atoms='end_task'`` draws them
        here, and they are routed (with B = 0) until the next task trains them."""
        super().end_task()
        A = torch.cat([self.bank_A, self.lora_A]) if self.bank_A.shape[0] else self.lora_A
        self.bank_A = A.detach().clone(memory_format=torch.contiguous_format)
        new = self._live_values() if self.frozen_scaled else self.lora_B.t()
        values = torch.cat([self.bank_BT, new]) if self.bank_BT.shape[0] else new
        self.bank_BT = values.detach().clone(memory_format=torch.contiguous_format)
        self.task_sizes.append(self.lora_A.shape[0])
        self.lora_A = self.lora_B = None
        if self.fresh_at_end:
            self._draw_atoms()

    def adapter_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta, tensors = super().adapter_state()
        meta["task_sizes"] = list(self.task_sizes)
        meta["live_atoms"] = self.lora_A is not None  # also True between tasks with fresh_atoms='end_task'
        tensors.update(bank_A=self.bank_A, bank_B=self.bank_B.contiguous())
        if self.lora_A is not None:
            tensors.update(lora_A=self.lora_A, lora_B=self.lora_B)
        return meta, tensors

    def check_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().check_adapter_state(meta, tensors)
        sizes = meta_int_list(meta, "task_sizes")
        bank = expect_tensor(tensors, "bank_A", (None, self.in_features)).shape[0]
        expect_tensor(tensors, "bank_B", (self.out_features, bank))
        if sum(sizes) != bank:
            raise AdapterStateError(
                "field", "task_sizes", f"{sizes} sums to {sum(sizes)} atoms but tensor bank_A holds {bank}"
            )
        if meta_bool(meta, "live_atoms", meta["task_active"]):
            expect_tensor(tensors, "lora_A", (self.r, self.in_features))
            expect_tensor(tensors, "lora_B", (self.out_features, self.r))

    def load_adapter_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        device = self._factor_like().device
        self.bank_A = tensors["bank_A"].to(device)
        self.bank_B = tensors["bank_B"].to(device)
        self.task_sizes = [int(n) for n in meta["task_sizes"]]
        if meta.get("live_atoms", meta["task_active"]):
            self.lora_A = nn.Parameter(tensors["lora_A"].to(device))
            self.lora_B = nn.Parameter(tensors["lora_B"].to(device))
        self.task_active = bool(meta["task_active"])

    def report(self) -> dict[str, Any]:
        rate = None
        if self.tokens_seen:
            per_atom = (self.atom_hits / self.tokens_seen).tolist()
            rate, start = [], 0
            for size in self.task_sizes + ([self.lora_A.shape[0]] if self.lora_A is not None else []):
                group = per_atom[start : start + size]
                rate.append(sum(group) / max(len(group), 1))
                start += size
        return {
            **super().report(),
            "bank_size": self.num_atoms,
            "task_sizes": list(self.task_sizes),
            "activation_rate_per_task": rate,
            "tokens_seen": self.tokens_seen,
        }


def _warn_budget(budget: int, bank_size: int) -> None:
    """Warn once per (budget, bank size) that top_k exceeds the bank and every atom is used instead."""
    if (budget, bank_size) in _BUDGET_WARNED:
        return
    _BUDGET_WARNED.add((budget, bank_size))
    warnings.warn(
        f"MoRAM top_k = {budget} (after the floor of 2) exceeds the bank of {bank_size} atoms; all "
        f"{bank_size} atoms are routed (k = min(top_k, bank size)), as the official TRACE code does (official X-TAIL code fails at torch.topk here)",
        UserWarning,
        stacklevel=3,
    )
