"""The teacher's reference sampler: diffusers schedulers, N steps, classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from avdm.models.denoiser import Denoiser
from avdm.models.schedules import FlowMatchingSchedule

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,
}
CFG_CONVENTIONS = ("standard", "dmd2")


def reference_sampler(denoiser: Denoiser) -> tuple[str, int]:
    """A teacher's own sampler and step count: flow Euler, 50 steps, for flow-matching teachers (Wan's
    default); DDIM, 25 steps, for DDPM teachers (AnimateDiff's)."""
    if isinstance(denoiser.schedule, FlowMatchingSchedule):
        return "flow_euler", 50
    return "ddim", 25


def make_scheduler(name: str, scheduler_config: dict[str, Any], **overrides: Any) -> SchedulerMixin:
    """A diffusers scheduler of kind ``name`` (``ddim``, ``euler``, ``flow_euler``) from a teacher config."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    return SCHEDULERS[name].from_config({**scheduler_config, **overrides})


def classifier_free_guidance(
    cond: Tensor, uncond: Tensor, scale: float, convention: str = "standard"
) -> Tensor:
    """Guided prediction.

    ``standard``: ``uncond + s (cond - uncond)`` (s = 1 is no guidance);
    ``dmd2``: ``cond + g (cond - uncond)`` (g = 0 is no guidance; equals standard with s = g + 1).
    """
    if convention == "standard":
        return uncond + scale * (cond - uncond)
    if convention == "dmd2":
        return cond + scale * (cond - uncond)
    raise ValueError(f"guidance convention must be one of {CFG_CONVENTIONS}, got {convention!r}")


def guided_prediction(
    denoiser: Denoiser,
    x_t: Tensor,
    t: Tensor,
    text: Tensor,
    uncond_text: Tensor | None,
    scale: float,
    convention: str = "standard",
) -> Tensor:
    """Raw prediction with CFG; conditional and unconditional run as one batched forward."""
    no_guidance = scale == (1.0 if convention == "standard" else 0.0)
    if uncond_text is None or no_guidance:
        return denoiser(x_t, t, text)
    pred = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, uncond_text]))
    cond, uncond = pred.chunk(2)
    return classifier_free_guidance(cond, uncond, scale, convention)


@torch.no_grad()
def sample_teacher(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    z: Tensor,
    text: Tensor,
    uncond_text: Tensor | None = None,
    num_steps: int = 25,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    on_step: Callable[[Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Sample the teacher with a diffusers scheduler.

    Args:
        z: starting noise ``(B, C, F, H, W)`` (scaled by ``scheduler.init_noise_sigma`` here).
        text, uncond_text: text embeddings ``(B, L, D)``; ``uncond_text`` enables CFG.
        num_steps: scheduler steps (NFE is twice this with CFG).
        guidance_scale: standard-convention CFG scale.
        on_step: called after every step with the step's normalized time ``t (B,)`` and the new state.

    Returns:
        The final latent ``(B, C, F, H, W)``.
    """
    scheduler.set_timesteps(num_steps, device=z.device)
    x = z * getattr(scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers have neither
    scale_input = getattr(scheduler, "scale_model_input", lambda sample, timestep: sample)
    for timestep in scheduler.timesteps:
        t = denoiser.schedule.t_from_timestep(timestep).to(z.device).expand(z.shape[0])
        pred = guided_prediction(denoiser, scale_input(x, timestep), t, text, uncond_text, guidance_scale)
        x = scheduler.step(pred, timestep, x, generator=generator, return_dict=False)[0]
        if on_step is not None:
            on_step(t, x)
    return x
