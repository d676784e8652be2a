"""diffusers schedulers that reproduce a student's ladder exactly: LCM / DDIM for DDPM students, flow Euler
for flow-matching ones.

Why LCM reproduces a fresh-noise student: ``LCMScheduler.step`` predicts ``x0`` from the model output,
mixes it as ``c_out x0 + c_skip x_t`` and re-noises to the next ladder timestep with fresh noise
``sqrt(abar') x0 + sqrt(1 - abar') eps``; the final step returns ``x0``. That is exactly
:meth:`FewStepGenerator.sample` with ``renoise="fresh"`` once ``c_skip = 0, c_out = 1``, which a large
``timestep_scaling`` gives to float32 precision. A ``deterministic`` student is DDIM (eta = 0) with
``trailing`` spacing and ``set_alpha_to_one``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from avdm.errors import ExportError
from avdm.models.generator import FewStepGenerator
from avdm.models.schedules import DDPMSchedule

# c_skip = 0.25 / ((s t)^2 + 0.25): with s = 1e4 it is < 3e-9 for every t >= 1 and c_out == 1 in float32.
TIMESTEP_SCALING = 1.0e4


def integer_ladder(generator: FewStepGenerator) -> list[int]:
    """The student's ladder as integer DDPM timesteps, high to low; raises if it has none."""
    ladder = [int(round(s)) for s in generator.timesteps]
    if any(abs(s - r) > 1e-6 for s, r in zip(generator.timesteps, ladder)) or ladder[-1] < 1:
        raise ExportError(
            f"the generator ladder {generator.timesteps} must be integer DDPM timesteps >= 1 to export"
        )
    return ladder


def beta_config(schedule: DDPMSchedule) -> dict[str, Any]:
    """diffusers ``beta_*`` keys rebuilding ``schedule.alphas_cumprod`` (``trained_betas`` as fallback)."""
    abar = schedule.alphas_cumprod.double()
    betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
    for digits in range(3, 8):  # the shortest round values (0.00085, 0.012) that rebuild the schedule
        cfg: dict[str, Any] = {
            "num_train_timesteps": schedule.num_train_timesteps,
            "beta_schedule": schedule.beta_schedule,
            "beta_start": float(f"{float(betas[0]):.{digits}g}"),
            "beta_end": float(f"{float(betas[-1]):.{digits}g}"),
            "trained_betas": None,
        }
        rebuilt = DDIMScheduler(**cfg).alphas_cumprod.double()
        if torch.allclose(rebuilt, abar, rtol=1e-5, atol=1e-8):
            return cfg
    return {**cfg, "trained_betas": [float(b) for b in betas]}


def lcm_original_steps(ladder: list[int], num_train_timesteps: int) -> int | None:
    """The ``original_inference_steps`` for which ``set_timesteps(len(ladder))`` gives ``ladder``."""
    n = len(ladder)
    for original in range(n, num_train_timesteps + 1):
        k = num_train_timesteps // original
        origin = (np.arange(1, original + 1) * k - 1)[::-1]
        picked = origin[np.floor(np.linspace(0, original, num=n, endpoint=False)).astype(np.int64)]
        if picked.tolist() == ladder:
            return original
    return None


def student_scheduler(generator: FewStepGenerator) -> tuple[SchedulerMixin, dict[str, Any]]:
    """A diffusers scheduler whose ``set_timesteps`` call (also returned) reproduces the student."""
    schedule = generator.denoiser.schedule
    if not isinstance(schedule, DDPMSchedule):
        raise ExportError(f"export supports DDPM (AnimateDiff) students, not {type(schedule).__name__}")
    ladder = integer_ladder(generator)
    T = schedule.num_train_timesteps
    common = {**beta_config(schedule), "prediction_type": schedule.prediction_type, "clip_sample": False}
    if generator.renoise == "fresh":
        original = lcm_original_steps(ladder, T)
        scheduler = LCMScheduler(
            **common,
            original_inference_steps=original or T,
            timestep_scaling=TIMESTEP_SCALING,
            set_alpha_to_one=True,
            steps_offset=0,
        )
        call = {"timesteps": ladder} if original is None else {"num_inference_steps": len(ladder)}
    else:
        scheduler = DDIMScheduler(
            **common, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0
        )
        call = {"num_inference_steps": len(ladder)}
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(**call)
    if probe.timesteps.tolist() != ladder:
        raise ExportError(
            f"no {type(scheduler).__name__} reproduces the {generator.renoise} ladder {ladder} "
            f"(it gives {probe.timesteps.tolist()})"
        )
    return scheduler, call


def flow_student_scheduler(
    generator: FewStepGenerator,
) -> tuple[FlowMatchEulerDiscreteScheduler, dict[str, Any]]:
    """A ``FlowMatchEulerDiscreteScheduler`` and its ``set_timesteps`` call that reproduce a flow student.

    The ladder's times are passed as ``sigmas`` with ``shift=1`` (they are already the student's times).
    A ``fresh`` student is the scheduler's ``stochastic_sampling``: ``x0 = x_t - sigma v``, re-noised to the
    next sigma with fresh noise (and ``x0`` itself after the last step); a ``deterministic`` one its plain
    Euler step, whose last step (to sigma 0) is the same ``x0``.
    """
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=generator.denoiser.schedule.num_train_timesteps,
        shift=1.0,
        stochastic_sampling=generator.renoise == "fresh",
    )
    call = {"sigmas": [float(t) for t in generator.t_values]}
    probe = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    probe.set_timesteps(**call)
    if not np.allclose(probe.sigmas[:-1].numpy(), call["sigmas"], atol=1e-6):
        raise ExportError(f"FlowMatchEulerDiscreteScheduler does not reproduce the ladder {call['sigmas']}")
    return scheduler, call
