"""The teacher's reference sampler: diffusers schedulers, N steps, classifier-free guidance
(:mod:`avdm.models.sampler_steps`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from avdm.models.denoiser import Denoiser
from avdm.models.sampler_steps import CFG_CONVENTIONS, classifier_free_guidance, guided_prediction  # noqa: F401
from avdm.models.schedules import FlowMatchingSchedule

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,
}


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
