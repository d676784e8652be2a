"""Score distribution matching (AVDM2 Sec. 4.2, eq. 8): 2D (frame) SDM and video SDM.

Both plugins share :class:`ScoreDistillationLoss`: noise the generator's sample, ask the frozen real
score (a teacher, optionally with CFG) and the trainable fake score (a copy of that teacher made in
:meth:`~ScoreDistillationLoss.bind`) for their noise estimates, and push
``w(t) (eps_real - eps_fake)`` into the sample through :func:`~avdm.losses.functional.sdm_surrogate`.
They differ only in the teacher role and in which frames they look at.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from avdm.config_schema import check_parameters
from avdm.errors import ConfigError
from avdm.losses.base import DistillationLoss, LossOutput, StepContext, TeacherBank
from avdm.losses.functional import (
    SDM_REDUCTIONS,
    WEIGHTINGS,
    check_choice,
    check_t_range,
    denoising_loss,
    sdm_gradient,
    sdm_surrogate,
)
from avdm.models.denoiser import Denoiser, trainable_copy
from avdm.models.lora import AdapterDenoiser, adapter_names, add_lora
from avdm.models.sampler_steps import CFG_CONVENTIONS, guided_prediction


class ScoreDistillationLoss(DistillationLoss):
    """Eq. 8 on ``K`` frames of the generator's sample (``num_frames``) or on the whole clip (``None``).

    Generator phase, for ``x0 = ctx.x0_fake`` (restricted to the chosen frames), ``t ~ U[t_min, t_max]``
    (the teacher schedule's own sampling, shift included) and fresh noise:
    ``x~_t = alpha_t x0 + sigma_t eps'``; ``eps_real`` from the teacher (CFG with ``ctx.uncond_text``
    when given), ``eps_fake`` from the fake score, both without gradient;
    ``grad = w(t) (eps_real - eps_fake)`` with DMD's per-sample weight
    ``w(t) = sigma_t / (alpha_t mean|x0 - x0_real_hat|)``, in fp32; the loss is
    ``0.5 ||x0 - stopgrad(x0 - grad)||^2``, averaged over its elements (``reduction: mean``, DMD2's
    ``0.5 mse``, the default) or summed (``sum``: the gradient reaching each element of ``x0`` is exactly
    ``grad``; ``mean`` divides it by ``x0.numel()``).

    Critic phase: eq. 2 for the fake score on the (detached) chosen frames, same ``t`` range.

    Args:
        weight: lambda_SDM.
        teacher: the real-score role in :class:`TeacherBank`: ``image`` or ``video``.
        num_frames: ``K`` random frames per sample, or ``None`` for every frame.
        t_min, t_max: normalized noise-level range (paper: 0.2, 0.98).
        guidance_scale: CFG scale of the real score (``standard``: 1 = none; ``dmd2``: 0 = none).
        guidance_convention: ``standard`` (``uncond + s (cond - uncond)``) or ``dmd2``
            (``cond + g (cond - uncond)``).
        reduction: ``sum`` or ``mean`` of the surrogate (see above).
        norm_eps: added to ``mean|x0 - x0_real_hat|`` in ``w(t)``.
        fake_score_weighting: ``uniform``, ``min_snr`` or ``truncated_snr`` weighting of the fake
            score's eq. 2.
        fake_score_lora: ``{rank, alpha, target_modules}``: the fake score is the teacher's network plus a
            LoRA adapter (:mod:`avdm.models.lora`), no copy; ``None``: a full trainable copy.
    """

    TEACHER_ROLES = ("image", "video")

    def __init__(
        self,
        weight: float = 1.0,
        teacher: str = "image",
        num_frames: int | None = 4,
        t_min: float = 0.2,
        t_max: float = 0.98,
        guidance_scale: float = 1.0,
        guidance_convention: str = "standard",
        reduction: str = "mean",
        norm_eps: float = 1e-6,
        fake_score_weighting: str = "uniform",
        fake_score_lora: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(weight)
        check_choice("teacher", teacher, self.TEACHER_ROLES)
        check_parameters(self, num_frames=num_frames)  # None: every frame
        check_t_range(t_min, t_max, self)
        check_parameters(self, guidance_scale=guidance_scale)
        check_choice("guidance_convention", guidance_convention, CFG_CONVENTIONS)
        check_choice("reduction", reduction, SDM_REDUCTIONS)
        check_choice("fake_score_weighting", fake_score_weighting, WEIGHTINGS)
        check_parameters(self, norm_eps=norm_eps)
        self.teacher_role = teacher
        self.num_frames = num_frames
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.guidance_scale = float(guidance_scale)
        self.guidance_convention = guidance_convention
        self.reduction = reduction
        self.norm_eps = float(norm_eps)
        self.fake_score_weighting = fake_score_weighting
        self.fake_score_lora = dict(fake_score_lora) if fake_score_lora is not None else None
        self.fake_score: Denoiser | None = None
        self.first_frame_only = False  # set by bind

    def _teacher(self, teachers: TeacherBank) -> Denoiser:
        teacher = getattr(teachers, self.teacher_role)
        if teacher is None:
            image = self.teacher_role == "image"
            hint = " (set model.image_teacher=shared, or teacher: video)" if image else ""
            raise ConfigError(  # the module names the plugin: loss.<name>.teacher=...
                f"teacher={self.teacher_role!r}: the teacher family has no {self.teacher_role} teacher{hint}"
            )
        return teacher

    def bind(self, teachers: TeacherBank) -> None:
        """Build the fake score ``eps_psi``: a trainable copy of the real-score teacher or, with
        ``fake_score_lora``, the teacher's own network plus a LoRA adapter of its own."""
        teacher = self._teacher(teachers)
        self._check_image_latents(teacher)
        if self.fake_score_lora is None:
            self.fake_score = trainable_copy(teacher)
            return
        name = f"fake_score_{self.teacher_role}"
        taken = adapter_names(teacher.model)
        name = next(
            f"{name}_{i}" if i else name
            for i in range(len(taken) + 1)
            if (f"{name}_{i}" if i else name) not in taken
        )
        add_lora(teacher.model, name, self.fake_score_lora, key="fake_score_lora")
        self.fake_score = AdapterDenoiser(teacher, name)

    def _check_image_latents(self, teacher: Denoiser) -> None:
        """A 2D teacher on latents of a VAE that compresses time sees latent frame 0 only: the one latent
        frame that is an image latent (docs/method_notes.md); more frames are refused in one line."""
        factor = teacher.temporal_compression
        self.first_frame_only = self.teacher_role == "image" and factor > 1
        if not self.first_frame_only:
            return
        if self.num_frames != 1:
            raise ConfigError(  # the module names the plugin: loss.<name>.num_frames=...
                f"num_frames={self.num_frames}: the VAE compresses time by {factor}, so only latent frame 0 "
                "is the latent of an image (the 2D teacher's input); set num_frames=1 (frame SDM on the "
                "first frame) or use the video SDM (loss=[video_sdm, ...])"
            )

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """The fake score's parameters (its adapter's only, with ``fake_score_lora``)."""
        if isinstance(self.fake_score, AdapterDenoiser):
            return (p for _, p in self.fake_score.trainable_parameters())
        return super().critic_parameters()

    def _fake_score(self) -> Denoiser:
        if self.fake_score is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(teachers) before computing losses")
        return self.fake_score

    def select_frames(self, x0: Tensor) -> Tensor:
        """``K`` distinct random frames of every sample: ``(B, C, F, H, W) -> (B, C, K, H, W)``; latent frame
        0 for a 2D teacher of a VAE that compresses time."""
        frames = x0.shape[2]
        if self.num_frames is None:
            return x0
        if self.first_frame_only:
            return x0[:, :, :1]  # the image latent (_check_image_latents)
        if self.num_frames > frames:
            raise ValueError(f"num_frames must be <= the clip's frame count {frames}, got {self.num_frames}")
        idx = torch.rand(x0.shape[0], frames, device=x0.device).argsort(dim=1)[:, : self.num_frames]
        return x0[torch.arange(x0.shape[0], device=x0.device)[:, None], :, idx].permute(0, 2, 1, 3, 4)

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        teacher, fake_score = self._teacher(ctx.teachers), self._fake_score()
        schedule = teacher.schedule
        x0 = self.select_frames(ctx.x0_fake)
        t = schedule.sample_t(x0.shape[0], self.t_min, self.t_max, device=x0.device)
        with torch.no_grad():
            x_t = schedule.add_noise(x0.detach(), torch.randn_like(x0), t)
            pred_real = guided_prediction(
                teacher, x_t, t, ctx.text, ctx.uncond_text, self.guidance_scale, self.guidance_convention
            )
            eps_real, x0_real = schedule.to_eps(pred_real, x_t, t), schedule.to_x0(pred_real, x_t, t)
            eps_fake = fake_score.schedule.to_eps(fake_score(x_t, t, ctx.text), x_t, t)
        grad, w, norm = sdm_gradient(
            x0, x0_real, eps_real, eps_fake, schedule.alpha(t), schedule.sigma(t), self.norm_eps
        )
        loss = sdm_surrogate(x0, grad, self.reduction)
        return LossOutput(
            loss,
            {"loss": loss.detach(), "grad_abs_mean": grad.abs().mean(), "norm": norm.mean(), "w": w.mean()},
        )

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        fake_score = self._fake_score()
        x0 = self.select_frames(ctx.x0_fake.detach())
        t = fake_score.schedule.sample_t(x0.shape[0], self.t_min, self.t_max, device=x0.device)
        loss = denoising_loss(fake_score, x0, ctx.text, t, weighting=self.fake_score_weighting)
        return LossOutput(loss, {"loss": loss.detach()})


class FrameSDMLoss(ScoreDistillationLoss):
    """AVDM2's 2D SDM: eq. 8 on ``num_frames`` random frames, real score = the image teacher.

    Args:
        weight: lambda_SDM.
        num_frames: ``K`` random frames per sample (paper: 4 of 16).
        settings: ``t_min``, ``t_max``, ``guidance_scale``, ``guidance_convention``, ``reduction``,
            ``norm_eps``, ``fake_score_weighting`` of :class:`ScoreDistillationLoss`.
    """

    FIXED_ARGUMENTS: ClassVar[tuple[str, ...]] = ("teacher",)  # passed here: no config key of this class

    def __init__(self, weight: float = 1.0, num_frames: int = 4, **settings: Any) -> None:
        super().__init__(weight, teacher="image", num_frames=num_frames, **settings)


class VideoSDMLoss(ScoreDistillationLoss):
    """The video-SDM variant (AVDM2 Table 1): eq. 8 on whole clips, real score = the video teacher.

    Args:
        weight: lambda_SDM.
        settings: ``t_min``, ``t_max``, ``guidance_scale``, ``guidance_convention``, ``reduction``,
            ``norm_eps``, ``fake_score_weighting`` of :class:`ScoreDistillationLoss`.
    """

    FIXED_ARGUMENTS: ClassVar[tuple[str, ...]] = ("teacher", "num_frames")  # passed here: no config keys

    def __init__(self, weight: float = 1.0, **settings: Any) -> None:
        super().__init__(weight, teacher="video", num_frames=None, **settings)
