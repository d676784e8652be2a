"""Pure tensor math of the objectives, in the papers' notation (equation numbers of AVDM2, 2412.05899)."""

from __future__ import annotations

import torch
from torch import Tensor

from avdm.models.denoiser import Denoiser

WEIGHTINGS = ("uniform", "min_snr")


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    text: Tensor,
    t: Tensor,
    eps: Tensor | None = None,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
) -> Tensor:
    """Eq. 2: ``E || D(alpha_t x0 + sigma_t eps, t) - target ||^2`` in the denoiser's parameterization.

    Args:
        x0: clean latents ``(B, C, F, H, W)``.
        t: normalized times ``(B,)``.
        weighting: ``uniform`` or ``min_snr`` (Hang et al. 2023: weight ``min(SNR, gamma)`` on the
            x0-space error, i.e. ``min(SNR, gamma) / SNR`` for epsilon targets).

    Returns:
        Scalar loss, mean over the batch.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    schedule = denoiser.schedule
    eps = torch.randn_like(x0) if eps is None else eps
    x_t = schedule.add_noise(x0, eps, t)
    target = schedule.target(x0, eps, t)
    per_sample = (denoiser(x_t, t, text).float() - target.float()).pow(2).flatten(1).mean(1)
    if weighting == "min_snr":
        # min(SNR, gamma) is the weight of the x0-space error; c = |d x0_hat / d prediction| converts it.
        alpha, sigma = schedule.alpha(t).float(), schedule.sigma(t).float()
        c = {"epsilon": sigma / alpha, "v_prediction": sigma, "flow": sigma}.get(
            schedule.prediction_type, torch.ones_like(sigma))
        per_sample = (schedule.snr(t).float().clamp(max=min_snr_gamma) * c**2).to(per_sample.device) * per_sample
    return per_sample.mean()
