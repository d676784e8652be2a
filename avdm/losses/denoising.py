"""Plain denoising (eq. 2) as a plugin: trains the generator on real clips, or a tiny teacher."""

from __future__ import annotations

import torch

from avdm.config_schema import check_parameters
from avdm.losses.base import DistillationLoss, LossOutput, StepContext
from avdm.losses.functional import WEIGHTINGS, check_choice, check_t_range, denoising_loss
from avdm.models.schedules import T_DENSITIES


class DenoisingLoss(DistillationLoss):
    """Eq. 2 on the real latents of the batch, applied to the generator's own denoiser.

    Used alone it is ordinary diffusion training (tiny teachers, the CPU smoke experiment); beside the
    distillation terms it adds generator-side real data (DMD2 style).

    Args:
        weight: lambda of this term.
        t_min, t_max: normalized time range of the noise levels (fractions of T).
        weighting: ``uniform``, ``min_snr`` or ``truncated_snr`` (see :func:`denoising_loss`).
        min_snr_gamma: gamma of min-SNR weighting.
        t_density: ``uniform`` or ``logit_normal`` (SD3's timestep density for flow matching) over
            ``[t_min, t_max]``, before the schedule's shift; ``logit_mean`` and ``logit_std`` shape it.
        single_frame: train on one random frame of every clip, as a one-frame clip (joint image and
            video training, as Wan is trained): the same network then also serves as the 2D teacher of
            frame-level SDM (``FrameTransformerDenoiser``).
        uncond_prob: fraction of samples trained on the empty prompt instead of their caption, so
            the denoiser also learns the unconditional score that classifier-free guidance needs
            (SD / AnimateDiff: 0.1). Training a teacher needs it; distillation leaves it at 0.
    """

    needs_generator_sample = False

    def __init__(
        self,
        weight: float = 1.0,
        t_min: float = 0.0,
        t_max: float = 1.0,
        weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        uncond_prob: float = 0.0,
        t_density: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        single_frame: bool = False,
    ) -> None:
        super().__init__(weight)
        check_t_range(t_min, t_max, self)
        check_choice("weighting", weighting, WEIGHTINGS)
        check_parameters(self, min_snr_gamma=min_snr_gamma, uncond_prob=uncond_prob)
        self.t_min, self.t_max, self.uncond_prob = t_min, t_max, uncond_prob
        self.weighting, self.min_snr_gamma = weighting, min_snr_gamma
        check_choice("t_density", t_density, T_DENSITIES)
        check_parameters(self, logit_std=logit_std)
        self.single_frame = bool(single_frame)
        self.t_density, self.logit_mean, self.logit_std = t_density, float(logit_mean), float(logit_std)

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        x0 = ctx.batch["latents"]
        if self.single_frame:
            pick = torch.randint(x0.shape[2], (x0.shape[0],), device=x0.device)
            x0 = x0[torch.arange(x0.shape[0], device=x0.device), :, pick].unsqueeze(2)
        denoiser = ctx.generator.denoiser
        text = ctx.text
        if self.uncond_prob > 0:
            if ctx.uncond_text is None:
                raise ValueError("DenoisingLoss(uncond_prob > 0) needs the empty prompt's embedding")
            drop = torch.rand(x0.shape[0], device=x0.device) < self.uncond_prob
            text = torch.where(drop[:, None, None], ctx.uncond_text.to(text), text)
        t = denoiser.schedule.sample_t(
            x0.shape[0],
            self.t_min,
            self.t_max,
            device=x0.device,
            density=self.t_density,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
        )
        loss = denoising_loss(
            denoiser, x0, text, t, weighting=self.weighting, min_snr_gamma=self.min_snr_gamma
        )
        return LossOutput(loss, {"loss": loss.detach()})
