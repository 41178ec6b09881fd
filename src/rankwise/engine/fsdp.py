"""``train.parallel: fsdp``: one task's training sharded with PyTorch's FSDP2 (`fully_shard`).

FSDP2 shards each parameter along its first dimension across the ranks (a ``DTensor`` per
parameter): while a task trains, every rank holds 1/N of the weights (frozen base included), of the
gradients and of the optimizer state, and gathers a block's weights just for its forward and
backward (reduce-scatter averages the gradients: the same ``(1/N) sum_r g_r`` as DDP).

The continual lifecycle changes the model between tasks: adapters are created (``begin_task``),
CoDyRA merges into the base weights, MoRAM appends atoms to its bank, InfLoRA designs A from the
task's inputs. None of that can run on DTensor shards that FSDP manages, so the engine follows the
"new wrapper per task" pattern it uses for DDP, one level deeper:

1. after ``begin_task`` (plain tensors, identical on every rank), `TaskFSDP` applies ``fully_shard``
   to the model's repeated blocks (the regions ``train.compile`` uses: every element of the outermost
   ``nn.ModuleList`` of linear layers, and adapter layers outside them) and to a root module whose
   forward is the step's loss (backbones call ``encode_image`` / ``generate``, not ``forward``;
   the root owns the remaining weights: embeddings, heads, norms);
2. the task's optimizer is built over the sharded parameters, so its state is sharded too;
3. mid-task snapshots gather the *trainable* tensors and their optimizer state to full tensors
   (`full_tensors`, identical on every rank; rank 0 writes them), and a resume scatters them back
   (`shard_optimizer_state`): the snapshot format is the one-process format, so a run may resume
   with another number of processes or another ``train.parallel``;
4. after the last step `TaskFSDP.release` gathers every parameter back into a plain tensor and
   removes FSDP from the modules (hooks, class, state), so ``end_task``, the checkpoint and the
   evaluation run on the plain model exactly as in one process, and the next task can shard again.

Between tasks (lifecycle, checkpoint, evaluation) each rank therefore holds the whole model, as under
DDP; the savings are during training (docs/scale.md has the memory model). Not combined with
``train.compile`` or a quantized base (``backbone.quantize``): both are refused with a ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rankwise.adapters.base import whole
from rankwise.engine.compiled import compile_regions
from rankwise.engine.distributed import _StepLoss
from rankwise.errors import RankwiseError


def full_tensors(obj: Any) -> Any:
    """`obj` (nested dicts / lists / tuples) with every DTensor replaced by its full tensor (a
    collective: every rank must call it with the same structure). Plain tensors pass as they are."""
    if isinstance(obj, torch.Tensor):
        return whole(obj)
    if isinstance(obj, dict):
        return {k: full_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def shard_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer state dict of full tensors (`full_tensors` of one, or a one-process snapshot)
    made loadable into `optimizer` whose parameters are DTensors: every per-parameter tensor of a
    parameter's shape becomes a DTensor with that parameter's mesh and placements."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    out: dict[str, Any] = {"state": {}, "param_groups": state["param_groups"]}
    for index, entry in state["state"].items():
        if int(index) >= len(params):  # not this optimizer's state: its loader says so
            out["state"][index] = entry
            continue
        p = params[int(index)]
        out["state"][index] = {
            key: distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            if isinstance(p, DTensor) and isinstance(value, torch.Tensor) and value.shape == p.shape
            else value
            for key, value in entry.items()
        }
    return out


def check_supported(model: nn.Module, method: str) -> None:
    """Refuse a method whose training adds a term computed outside the model's forward (O-LoRA's
    orthogonality and L2 regulariser, `AdapterLayer.extra_loss`): under FSDP its tensors are shards
    there, and the term is not a sum over shards (a norm), so it cannot be computed shard by shard."""
    from rankwise.adapters.base import AdapterLayer
    from rankwise.errors import ConfigError

    layer_class = getattr(model, "layer_class", None)
    if layer_class is not None and layer_class.extra_loss is not AdapterLayer.extra_loss:
        raise ConfigError(
            "train.parallel", "fsdp", f"ddp for method {method!r}: its regulariser is computed outside the "
            "forward, on whole tensors (docs/scale.md)",
        )  # fmt: skip


class TaskFSDP:
    """One task's FSDP2 training over `model` (see the module docstring): ``loss(*args)`` through the
    sharded root; ``sync(last)`` skips the gradient reduce-scatter of all but the last micro-batch;
    ``release()`` gives the plain model back."""

    def __init__(
        self, model: nn.Module, loss: Callable[..., torch.Tensor], device: torch.device
    ) -> None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if not dist.is_initialized():  # the engine uses it with several processes; one works too
            raise RankwiseError("TaskFSDP needs an initialised process group (launch with torchrun)")
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        # FSDP2 shards along dim 0, so 0-d parameters (CLIP's logit_scale) stay whole on every rank;
        # when they train (full fine-tuning), their gradients are averaged here after the last micro-batch
        scalars = {p for p in model.parameters() if p.dim() == 0}
        self._replicated = [p for p in scalars if p.requires_grad]
        self._world = dist.get_world_size()
        self.units = compile_regions(model)
        for name in self.units:
            fully_shard(model.get_submodule(name), mesh=mesh, ignored_params=scalars)
        self._root = fully_shard(_StepLoss(model, loss), mesh=mesh, ignored_params=scalars)
        self._released = False

    def __call__(self, *args: Any) -> torch.Tensor:
        return self._root(*args)

    @contextmanager
    def sync(self, last: bool) -> Iterator[None]:
        self._root.set_requires_gradient_sync(last)  # recursive over every sharded block
        yield
        if last and self._replicated:
            import torch.distributed as dist

            for p in self._replicated:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self._world)

    def release(self) -> None:
        """Gather every sharded parameter into a plain one (same name, same ``requires_grad``) and take
        FSDP off every module, so the model is the one-process model again. A collective."""
        from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
        from torch.distributed._composable_state import _module_state_mapping
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        if self._released:
            return
        sharded = [m for m in self._root.modules() if isinstance(m, FSDPModule)]
        for module in sharded:
            module.reshard()  # the sharded parameters are the registered ones (a no-op after a backward)
            state = module._get_fsdp_state()
            state._pre_forward_hook_handle.remove()
            state._post_forward_hook_handle.remove()
        with torch.no_grad():
            for module in self._root.modules():
                for name, p in list(module._parameters.items()):
                    if isinstance(p, DTensor):
                        module._parameters[name] = nn.Parameter(
                            p.full_tensor(), requires_grad=p.requires_grad
                        )
                for flag in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
                    module.__dict__.pop(flag, None)
        for module in sharded:
            cls = type(module)
            module.__class__ = cls.__mro__[cls._orig_cls_mro_index]  # FSDP<Block> -> Block
            module.__dict__.pop(STATE_KEY, None)
            module.__dict__.pop(REGISTRY_KEY, None)
            _module_state_mapping.pop(module, None)
        self._released = True
