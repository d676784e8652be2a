"""Pure tensor math of the objectives, in the papers' notation (equation numbers of AVDM2, 2412.05899)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from avdm.config_schema import check_parameters
from avdm.errors import ConfigError
from avdm.models.denoiser import Denoiser

WEIGHTINGS = ("uniform", "min_snr", "truncated_snr")


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
        weighting: the weight of the x0-space error ``||x0_hat - x0||^2``, converted to the
            denoiser's parameterization: ``uniform`` (none: the plain loss of the target), ``min_snr``
            (Hang et al. 2023: ``min(SNR, gamma)``) or ``truncated_snr`` (Salimans & Ho 2022:
            ``max(SNR, 1)``; equals the epsilon loss where SNR >= 1 and the x0 loss below, so the
            high-noise steps, where the layout and the motion of a sample are decided, are not
            weighted down by SNR as the epsilon loss does).

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
    if weighting != "uniform":
        # w(SNR) weighs the x0-space error; c = |d x0_hat / d prediction| converts it.
        alpha, sigma = schedule.alpha(t).float(), schedule.sigma(t).float()
        c = {"epsilon": sigma / alpha, "v_prediction": sigma, "flow": sigma}.get(
            schedule.prediction_type, torch.ones_like(sigma)
        )
        snr = schedule.snr(t).float()
        w = snr.clamp(max=min_snr_gamma) if weighting == "min_snr" else snr.clamp(min=1.0)
        per_sample = (w * c**2).to(per_sample.device) * per_sample
    return per_sample.mean()


# --- argument checks shared by the plugins ---------------------------------------------------------
# They raise ConfigError (a ValueError): a plugin built from a config then stops the run with one line.
def check_t_range(t_min: float, t_max: float, owner: Any = None) -> None:
    """Raise :class:`~avdm.errors.ConfigError` unless ``t_min`` and ``t_max`` (fractions of T) lie in their
    ranges and ``t_min < t_max``: the rules of :mod:`avdm.config_schema` (``RANGES``, ``ORDERS``), with
    the message :func:`~avdm.config.validate` gives."""
    check_parameters(owner, t_min=t_min, t_max=t_max)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`~avdm.errors.ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")


# --- score distribution matching (AVDM2 Sec. 4.2, DMD) ---------------------------------------------
SDM_REDUCTIONS = ("sum", "mean")


def sdm_gradient(
    x0: Tensor,
    x0_real: Tensor,
    eps_real: Tensor,
    eps_fake: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-element SDM gradient at the generator's sample, with DMD's per-sample weight, in fp32.

    Eq. 8: ``grad = w(t) (eps_phi(x~_t, t) - eps_psi(x~_t, t))`` with DMD's weight
    ``w(t) = sigma_t / (alpha_t * mean|x0 - x0_real_hat|)``. Since
    ``x0_hat = (x~_t - sigma_t eps_hat) / alpha_t`` for any parameterization, this is
    ``grad = (x0_fake_hat - x0_real_hat) / mean|x0 - x0_real_hat|`` (DMD2's code).

    Args:
        x0: the generator's sample ``(B, ...)``.
        x0_real: the real score's clean estimate at ``x~_t`` ``(B, ...)``.
        eps_real, eps_fake: noise estimates of the real (teacher) and fake scores at ``x~_t`` ``(B, ...)``.
        alpha, sigma: ``alpha_t, sigma_t`` of each sample ``(B,)``.
        norm_eps: added to the mean absolute difference so the weight stays finite.

    Returns:
        ``grad (B, ...)`` (fp32, no graph), ``w (B,)`` and the normalizer ``mean|x0 - x0_real_hat| (B,)``.
    """
    with torch.no_grad():
        x0, x0_real = x0.detach().float(), x0_real.float()
        norm = (x0 - x0_real).abs().flatten(1).mean(1)
        w = sigma.float() / (alpha.float() * (norm + norm_eps))
        grad = w.view(-1, *([1] * (x0.ndim - 1))) * (eps_real.float() - eps_fake.float())
    return grad, w, norm


def sdm_surrogate(x0: Tensor, grad: Tensor, reduction: str = "sum") -> Tensor:
    """``0.5 || x0 - stopgrad(x0 - grad) ||^2``, whose gradient w.r.t. ``x0`` is ``grad`` (eq. 8).

    Args:
        x0: the generator's sample ``(B, ...)``, with gradient.
        grad: the gradient to inject ``(B, ...)``.
        reduction: ``sum`` over every element (then ``d loss / d x0 = grad`` exactly, element by element)
            or ``mean`` (DMD2's ``0.5 * mse_loss``: ``d loss / d x0 = grad / x0.numel()``).

    Returns:
        Scalar fp32 loss.
    """
    check_choice("reduction", reduction, SDM_REDUCTIONS)
    target = (x0.detach().float() - grad.float()).detach()
    sq = (x0.float() - target).pow(2)
    return 0.5 * (sq.sum() if reduction == "sum" else sq.mean())


# --- adversarial losses (AVDM2 Sec. 4.1) -----------------------------------------------------------
GAN_LOSSES = ("non_saturating", "hinge")


def gan_generator_loss(logits_fake: Tensor, kind: str = "non_saturating") -> Tensor:
    """Generator side of eq. 7 on discriminator logits ``(B, N)`` (N patch logits per sample).

    ``non_saturating``: ``E softplus(-D(x~_t))`` (``-log sigmoid D``); ``hinge``: ``E -D(x~_t)``.
    """
    check_choice("loss_type", kind, GAN_LOSSES)
    if kind == "non_saturating":
        return F.softplus(-logits_fake.float()).mean()
    return (-logits_fake.float()).mean()


def gan_critic_loss(logits_real: Tensor, logits_fake: Tensor, kind: str = "non_saturating") -> Tensor:
    """Discriminator side of eq. 6 on logits of real ``(B_r, N)`` and detached fake ``(B_f, N)`` inputs.

    ``non_saturating``: ``E softplus(-D(x_t)) + E softplus(D(x~_t))``;
    ``hinge``: ``E relu(1 - D(x_t)) + E relu(1 + D(x~_t))``.
    """
    check_choice("loss_type", kind, GAN_LOSSES)
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "non_saturating":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


# --- trajectory regression (AccVideo) --------------------------------------------------------------
DISTANCES = ("mse", "pseudo_huber")


def regression_distance(x: Tensor, y: Tensor, distance: str = "mse", huber_c: float = 1e-3) -> Tensor:
    """Mean over the batch of a per-sample distance between ``x`` and ``y`` ``(B, ...)``, in fp32.

    ``mse``: ``mean_j (x_j - y_j)^2``; ``pseudo_huber``: ``sqrt(mean_j (x_j - y_j)^2 + c^2) - c``
    (iCT's ``sqrt(||x - y||^2 + c'^2) - c'`` divided by ``sqrt(dim)``, with ``c = c' / sqrt(dim)``, so ``c``
    is in units of the per-element RMS error and does not depend on the latent size).
    """
    check_choice("distance", distance, DISTANCES)
    ms = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    if distance == "mse":
        return ms.mean()
    return (ms / ((ms + huber_c**2).sqrt() + huber_c)).mean()  # = sqrt(ms + c^2) - c, without cancellation
