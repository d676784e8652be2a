"""One optimizer update of a role (the generator, or one plugin's critic) of a distillation run: backward,
the gradient average of weights FSDP2 does not hold, the non-finite checks, clipping, the step.

A non-finite loss or gradient skips the update (an Adam step on it would make the weights NaN) and is
counted in the module's ``nonfinite_skips`` / ``consecutive_nonfinite`` buffers; ``max_consecutive_nonfinite``
in a row stop training (:class:`NonFiniteLossError`), and so do weights left non-finite by a finite update
(:class:`NonFiniteWeightsError`), before any checkpoint holds them. ``module`` is a
:class:`~avdm.training.distillation.DistillationModule`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from avdm.errors import AvdmUserError
from avdm.training.sharding import average_replicated_grads, clip_grads_, global_norm


class NonFiniteLossError(AvdmUserError):
    """Too many consecutive iterations with a non-finite loss or gradient."""


class NonFiniteWeightsError(AvdmUserError):
    """An update left trainable weights non-finite; training stops before any checkpoint holds them."""


def check_finite(module: Any, terms: Mapping[str, Tensor], phase: str) -> bool:
    """Whether every rank's ``terms`` are finite; all ranks agree, so they skip or step together."""
    bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
    finite = torch.tensor(0.0 if bad else 1.0, device=module.device)
    if float(module.trainer.strategy.reduce(finite, reduce_op="min")) == 1.0:
        return True
    count_nonfinite(module, bad or ["(on another rank)"], phase)
    return False


def count_nonfinite(module: Any, bad: list[str], phase: str) -> None:
    """One skipped update; stop after ``max_consecutive_nonfinite`` in a row."""
    module.nonfinite_skips += 1
    module.consecutive_nonfinite += 1
    module.log(f"{phase}/nonfinite_skips", module.nonfinite_skips.float(), batch_size=1)
    count, limit = int(module.consecutive_nonfinite), module.max_consecutive_nonfinite
    if count >= limit:
        role = "generator" if phase == "gen" else "critic"
        raise NonFiniteLossError(
            f"{role} update skipped: {', '.join(bad)} non-finite in {count} consecutive iterations "
            f"(module.max_consecutive_nonfinite={limit}); training stopped"
        )


def update_role(
    module: Any, optimizer: Any, scheduler: Any, loss: Tensor, counted: bool, role: str
) -> tuple[bool, Tensor | None]:
    """Backward, clip, step. Returns whether the step was taken (not when the gradient is non-finite:
    an Adam step on it would make the weights NaN) and the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    module.manual_backward(loss)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if module._replicated:  # FSDP2 averages the gradients of what it shards, this the rest
        average_replicated_grads(params, module.device_mesh["data_parallel"].get_group())
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = global_norm(grads) if grads else None
    # After DDP's all-reduce the gradients, and so this decision, are the same on every rank.
    if grad_norm is not None and not torch.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        count_nonfinite(module, [f"{role} gradient"], "gen" if role == "generator" else "critic")
        return False, grad_norm
    if module.grad_clip_norm is not None and module._sharded and grads:
        clip_grads_(grads, module.grad_clip_norm, grad_norm)  # on the shards, by the norm over all of them
    elif module.grad_clip_norm is not None:
        module.clip_gradients(
            optimizer, gradient_clip_val=module.grad_clip_norm, gradient_clip_algorithm="norm"
        )
    if counted:
        optimizer.step()
    else:  # critic updates go through the strategy (precision, scaler) without advancing global_step
        module.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if not torch.isfinite(global_norm(params)):
        raise NonFiniteWeightsError(
            f"the {role}'s weights became non-finite at iteration {int(module.iterations)} "
            f"(finite loss and gradient: a learning rate or loss weight too large?); training stopped"
        )
    return True, grad_norm
