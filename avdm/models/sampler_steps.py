"""One step of a sampler, shared by the teacher's sampler, the generator and the losses: classifier-free
guidance and the deterministic DDIM (eta = 0) / Euler step between two noise levels of a schedule."""

from __future__ import annotations

import torch
from torch import Tensor

from avdm.models.denoiser import Denoiser
from avdm.models.schedules import NoiseSchedule

CFG_CONVENTIONS = ("standard", "dmd2")


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


def deterministic_step(
    schedule: NoiseSchedule, pred: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor
) -> Tensor:
    """DDIM (eta = 0) / Euler step from ``t`` to ``t_next`` given a raw prediction at ``(x_t, t)``.

    ``x_{t'} = alpha_{t'} x0_hat + sigma_{t'} eps_hat``; for flow matching this is the Euler step
    ``x_t + (t' - t) v``. ``pred, x_t: (B, ...)``, ``t, t_next: (B,)``.
    """
    x0_hat, eps_hat = schedule.to_x0(pred, x_t, t), schedule.to_eps(pred, x_t, t)
    return schedule.add_noise(x0_hat, eps_hat, t_next)
