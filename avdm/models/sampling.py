"""Sampling: the one path from prompts to latents (:func:`latents_for_prompts`), and the teacher's sampler
(diffusers schedulers, N steps, classifier-free guidance: :mod:`avdm.models.sampler_steps`).

Every caller that turns prompts into latents (``avdm.sample``, ``avdm.compare``, the diagnostics, the
sample callback, ``DistillationModule.sample``) goes through :func:`latents_for_prompts`, so the same prompt
at the same index and seed starts from the same noise everywhere, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from avdm.models.denoiser import Denoiser
from avdm.models.generator import FewStepGenerator
from avdm.models.prompt_encoders import PromptEncoder
from avdm.models.sampler_steps import guided_prediction

# (z, text, uncond or None, rng) -> latents, all (B, ...) and on one device.
Sampler = Callable[[Tensor, Tensor, "Tensor | None", torch.Generator], Tensor]

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,
}


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


def prompt_noise(latent_shape: Sequence[int], count: int, seed: int, first: int = 0) -> Tensor:
    """Starting noise ``(count, C, F, H, W)``: video ``first + i``'s drawn from its own seed
    ``seed * 100_003 + first + i``, so a video's noise does not depend on the batch it is in."""
    return torch.stack(
        [
            torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(seed * 100_003 + i))
            for i in range(first, first + count)
        ]
    )


@torch.no_grad()
def latents_for_prompts(
    sampler: Sampler,
    prompt_encoder: PromptEncoder,
    prompts: Sequence[str],
    latent_shape: Sequence[int],
    seed: int = 0,
    first: int = 0,
    guided: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Prompts -> text and (``guided``) empty-prompt embeddings -> seeded noise -> ``sampler`` latents.

    Args:
        prompts: the batch; ``first`` is the index of its first prompt in the whole set (noise, rng).
        latent_shape: ``(C, F, H, W)`` of one clip's latent.
        guided: also encode the empty prompt (the sampler's ``uncond``; ``None`` otherwise).

    Returns:
        ``(B, C, F, H, W)`` latents; the sampler's own randomness comes from a generator seeded
        ``seed + first``.
    """
    text = prompt_encoder(list(prompts)).to(device)
    uncond = prompt_encoder([""]).to(device).expand(len(prompts), -1, -1) if guided else None
    z = prompt_noise(latent_shape, len(prompts), seed, first).to(device)
    return sampler(z, text, uncond, torch.Generator().manual_seed(seed + first))


def student_sampler(generator: FewStepGenerator, num_steps: int | None = None) -> Sampler:
    """The few-step generator as a :data:`Sampler` (no guidance: ``uncond`` is ignored)."""

    def sample(z: Tensor, text: Tensor, uncond: Tensor | None, rng: torch.Generator) -> Tensor:
        return generator.sample(z, text, num_steps, generator=rng)

    return sample


def teacher_sampler(
    denoiser: Denoiser, scheduler_config: dict[str, Any], kind: str, steps: int, guidance: float
) -> Sampler:
    """The frozen teacher with a fresh diffusers scheduler of ``kind`` per call, ``steps`` steps, CFG
    ``guidance`` (applied when the caller passes ``uncond``)."""

    def sample(z: Tensor, text: Tensor, uncond: Tensor | None, rng: torch.Generator) -> Tensor:
        scheduler = make_scheduler(kind, scheduler_config)
        return sample_teacher(denoiser, scheduler, z, text, uncond, steps, guidance, generator=rng)

    return sample
