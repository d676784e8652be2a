"""FSDP2 (``torch.distributed.fsdp.fully_shard``) over every role of a distillation module.

Lightning's :class:`~lightning.pytorch.strategies.ModelParallelStrategy` creates the device mesh and
calls ``LightningModule.configure_model``, where :func:`shard_roles` runs. It shards every network a
:class:`~avdm.models.denoiser.Denoiser` runs (the frozen teacher, whose one shard set serves the real
scores, the 2D teacher view and the discriminator's encoder; the generator; full-copy fake scores; an
EMA; a consistency target), the prompt encoder, and with them LoRA adapters, which live inside the
teacher's network. What is left trainable outside those networks (discriminator heads: a few MB) stays
replicated and has its gradients averaged over the data-parallel ranks (:func:`average_replicated_grads`),
as DDP would.

Shard units (one all-gather each):

* a UNet (``down_blocks``): every child of every down / mid / up block (resnets, attentions, motion
  modules, samplers) and every top-level child with weights (``conv_in``, the time embedding, ...).
  AnimateDiff's 2D teacher view is a second ``UNet2DConditionModel`` built of the *same* children
  (:func:`~avdm.models.families.animatediff.spatial_unet`), so a unit must be such a shared child, not a
  block;
* a transformer: each of its ``blocks`` / ``transformer_blocks``, the rest under the network's root;
* a text encoder: the modules its class names in ``_no_split_modules`` (``T5Block``, ``CLIPEncoderLayer``).

FSDP2 takes the first module to run forward as the root of a shard set. The 2D view calls the shared
units outside the motion UNet's forward, so :func:`shard_roles` fixes every root right after sharding
(``FSDPState._lazy_init``: torch has no public call for it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from avdm.errors import ConfigError
from avdm.models.pretrained import DTYPES

BLOCK_LISTS = ("blocks", "transformer_blocks", "single_transformer_blocks")


@dataclass(frozen=True)
class ShardingSettings:
    """``module.sharding``: how FSDP2 holds the weights.

    Attributes:
        param_dtype: dtype of the all-gathered weights in forward / backward (``bfloat16`` on GPUs);
            ``None``: the stored dtype (float32 masters; frozen roles in ``model.teacher_dtype``).
        reduce_dtype: dtype of the gradient reduce-scatter (``float32``: exact averaging of bf16
            gradients); ``None``: ``param_dtype``.
        reshard_after_forward: free the gathered weights after each unit's forward (ZeRO-3) or keep them
            until backward (ZeRO-2: less communication, more memory).
    """

    param_dtype: str | None = None
    reduce_dtype: str | None = "float32"
    reshard_after_forward: bool = True

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> ShardingSettings:
        values = dict(values or {})
        unknown = sorted(set(values) - {"param_dtype", "reduce_dtype", "reshard_after_forward"})
        if unknown:
            raise ConfigError(
                f"module.sharding.{unknown[0]}: unknown key; accepted keys: param_dtype, reduce_dtype, "
                "reshard_after_forward"
            )
        for key in ("param_dtype", "reduce_dtype"):
            if values.get(key) is not None and values[key] not in DTYPES:
                raise ConfigError(
                    f"module.sharding.{key}={values[key]!r}: expected one of {', '.join(DTYPES)} or null"
                )
        if not isinstance(values.get("reshard_after_forward", True), bool):
            raise ConfigError(
                f"module.sharding.reshard_after_forward={values['reshard_after_forward']!r}: expected true "
                "or false"
            )
        return cls(**values)

    def policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=DTYPES[self.param_dtype] if self.param_dtype else None,
            reduce_dtype=DTYPES[self.reduce_dtype] if self.reduce_dtype else None,
        )


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is held by FSDP2 (a ``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def _unmanaged(module: nn.Module) -> list[nn.Parameter]:
    from torch.distributed.tensor import DTensor

    return [p for p in module.parameters() if not isinstance(p, DTensor)]


def shard_units(network: nn.Module) -> list[nn.Module]:
    """The modules of ``network`` that become one FSDP2 unit each (see the module docstring)."""
    units: list[nn.Module] = []
    if isinstance(getattr(network, "down_blocks", None), nn.ModuleList):  # a UNet
        blocks = [*network.down_blocks, *network.up_blocks]
        if getattr(network, "mid_block", None) is not None:
            blocks.append(network.mid_block)
        for block in blocks:
            for child in block.children():
                units.extend(child if isinstance(child, nn.ModuleList) else [child])
        lists = {"down_blocks", "up_blocks", "mid_block"}
        units += [m for name, m in network.named_children() if name not in lists]
    elif lists := [
        getattr(network, n) for n in BLOCK_LISTS if isinstance(getattr(network, n, None), nn.ModuleList)
    ]:
        units = [block for blocks in lists for block in blocks]
    else:
        names = set(getattr(network, "_no_split_modules", None) or ())
        for module in network.modules():
            inside = any(module in set(unit.modules()) for unit in units)
            if type(module).__name__ in names and not inside:
                units.append(module)
    return [unit for unit in units if any(True for _ in unit.parameters())]


def networks(module: nn.Module) -> list[nn.Module]:
    """Every network a denoiser view runs, the prompt encoder's text encoder: largest first, so that a
    view built of another network's modules (AnimateDiff's 2D teacher) comes after it."""
    from avdm.models.denoiser import Denoiser
    from avdm.models.prompt_encoders import PromptEncoder

    found: dict[int, nn.Module] = {}
    for sub in module.modules():
        if isinstance(sub, Denoiser):
            found.setdefault(id(sub.model), sub.model)
        elif isinstance(sub, PromptEncoder):
            found.setdefault(id(sub.text_encoder), sub.text_encoder)
    return sorted(found.values(), key=lambda net: -sum(p.numel() for p in net.parameters()))


def cast_buffers(network: nn.Module, dtype: torch.dtype) -> int:
    """Cast ``network``'s floating-point buffers to ``dtype`` (the all-gathered weights' dtype), except
    inside its ``_keep_in_fp32_modules`` (diffusers' list); returns how many were cast.

    FSDP2's ``param_dtype`` casts parameters and forward inputs, never buffers: a float32 buffer added to
    a bf16 activation (AnimateDiff's motion-module positional table ``pe``) promotes it back to float32
    and the next bf16 linear refuses it. ``ModelMixin.to(dtype)``, how diffusers runs bf16, casts them.
    """
    keep = tuple(getattr(network, "_keep_in_fp32_modules", None) or ())
    cast = 0
    for module_name, module in network.named_modules():
        if any(part in keep for part in module_name.split(".")):
            continue
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                module._buffers[name] = buffer.to(dtype)
                cast += 1
    return cast


def shard_roles(module: nn.Module, mesh: Any, settings: ShardingSettings) -> list[nn.Module]:
    """``fully_shard`` every network of ``module`` over the 1-D data-parallel ``mesh``; returns the roots.

    Replicated trainable weights left after it (heads) are broadcast from rank 0, so every rank starts
    from the same values as under DDP.
    """
    from torch.distributed.fsdp import fully_shard

    options = {
        "mesh": mesh,
        "mp_policy": settings.policy(),
        "reshard_after_forward": settings.reshard_after_forward,
    }
    roots: list[nn.Module] = []
    for network in networks(module):
        if not _unmanaged(network):
            continue  # a view of weights already sharded (AnimateDiff's 2D teacher)
        for unit in shard_units(network):
            if _unmanaged(unit):
                fully_shard(unit, **options)
        # A root's own weights (a transformer's embeddings and head) stay gathered from forward to backward,
        # fully_shard's default for a root. Measured: with the Wan root resharded after its forward, the
        # generator's backward (several forwards of one network before it) found them freed.
        fully_shard(network, **{**options, "reshard_after_forward": False})
        if settings.param_dtype:
            cast_buffers(network, DTYPES[settings.param_dtype])
        roots.append(network)
    for root in roots:
        fully_shard.state(root)._lazy_init()
    # Before Lightning moves the module: what fully_shard left (heads) is still on the CPU, and NCCL
    # broadcasts device tensors only.
    device = torch.device(
        mesh.device_type, torch.cuda.current_device() if mesh.device_type == "cuda" else None
    )
    group = mesh.get_group()
    for p in replicated_trainable(module):
        value = p.data.to(device)
        dist.broadcast(value, src=dist.get_global_rank(group, 0), group=group)
        p.data.copy_(value)
    return roots


def reshard_all(module: nn.Module) -> None:
    """Free every gathered weight of ``module``'s FSDP2 units. A root keeps its own weights gathered from a
    forward until the next backward, so after a forward without one (sampling, diagnostics) they stay
    gathered: an EMA's root would then hold full tensors where its generator holds shards."""
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def replicated_trainable(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters not held by FSDP2 (discriminator heads)."""
    from torch.distributed.tensor import DTensor

    return [p for p in module.parameters() if p.requires_grad and not isinstance(p, DTensor)]


def average_replicated_grads(params: list[nn.Parameter], group: Any) -> None:
    """Average the gradients of replicated ``params`` over ``group`` in one all-reduce (what DDP does).

    Every rank runs the same graph (the module's passes do not depend on the data), so the same parameters
    have gradients on every rank."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None and not isinstance(p, DTensor)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    for grad, piece in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(piece.view_as(grad))


def on_local_shards(multi_avg_fn: Callable[..., None]) -> Callable[..., None]:
    """``AveragedModel``'s elementwise ``multi_avg_fn`` on plain tensors: sharded (``DTensor``) weights by
    their local shards (the same shard layout in the EMA and the generator), so one ``torch._foreach_*``
    call takes the weights and the (unsharded) buffers together, with no ``DTensor`` dispatch."""
    from torch.distributed.tensor import DTensor

    def local(t: Tensor) -> Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    def apply(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        multi_avg_fn([local(t) for t in averaged], [local(t) for t in current], num_averaged)

    return apply


def global_norm(tensors: list[Tensor]) -> Tensor:
    """The 2-norm of ``tensors`` as one plain tensor: sharded ``DTensor`` pieces are summed over ranks,
    replicated tensors counted once.

    On the local shards and one all-reduce: ``get_total_norm`` on ``DTensor`` s runs a sharding
    propagation per tensor (measured on CPU: 6 ms each, 10x the whole DDP step on the tiny teachers).
    """
    from torch.distributed.tensor import DTensor

    sharded = [t for t in tensors if isinstance(t, DTensor)]
    plain = [t for t in tensors if not isinstance(t, DTensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    squared = torch.zeros((), dtype=torch.float32, device=device)
    if sharded:
        squared = torch.nn.utils.get_total_norm([t.to_local() for t in sharded]).float().square()
        dist.all_reduce(squared, group=sharded[0].device_mesh.get_group())
    if plain:
        squared = squared + torch.nn.utils.get_total_norm(plain).float().square()
    return squared.sqrt()


def clip_grads_(grads: list[Tensor], max_norm: float, total_norm: Tensor) -> None:
    """Scale ``grads`` in place so that their global norm ``total_norm`` is at most ``max_norm``: torch's
    ``clip_grad_norm_`` rule (``max_norm / (norm + 1e-6)``, at most 1), applied to the local shards."""
    from torch.distributed.tensor import DTensor

    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    locals_ = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    torch._foreach_mul_(locals_, coef.to(locals_[0].device))


def local_bytes(tensors: Iterator[Tensor] | list[Tensor]) -> int:
    """Bytes this process holds for ``tensors`` (a ``DTensor``: its local shard; each tensor once)."""
    from torch.distributed.tensor import DTensor

    seen: dict[int, int] = {}
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        seen[id(t)] = local.numel() * local.element_size()
    return sum(seen.values())


def storage_key(t: Tensor) -> int:
    """An id of ``t``'s storage that is the same for every alias of it (a ``DTensor``: its local shard)."""
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.untyped_storage().data_ptr()
