"""Adversarial distribution matching (AVDM2 Sec. 4.1, eqs. 6-7): a denoising GAN whose discriminator is
the frozen video teacher's encoder plus a trainable :class:`~avdm.models.heads.MultiScaleDiscriminatorHead`.

:class:`FeatureGANLoss` holds what every teacher-feature discriminator needs (layer choice, head
construction in ``bind``, the batched real/fake pass); :class:`DenoisingGANLoss` adds AVDM2's inputs
(forward-noised real clips and generator samples). The discriminator itself (layer choice, head,
the batched pass) is :class:`~avdm.models.feature_discriminator.FeatureDiscriminator`. AccVideo's
timestep-aware discriminator
(:class:`~avdm.losses.trajectory.TrajectoryGANLoss`) reuses the same base.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

from avdm.config_schema import check_parameters
from avdm.losses.base import DistillationLoss, LossOutput, StepContext, TeacherBank
from avdm.losses.functional import (
    GAN_LOSSES,
    check_choice,
    check_t_range,
    gan_critic_loss,
    gan_generator_loss,
)
from avdm.models.denoiser import Denoiser
from avdm.models.feature_discriminator import FeatureDiscriminator


class FeatureGANLoss(DistillationLoss):
    """A GAN whose discriminator is frozen ``teachers.video`` features + a trainable multi-scale head.

    Subclasses decide what is real and what is fake (:meth:`generator_loss`, :meth:`critic_loss`) and call
    :meth:`discriminate`. The teacher is frozen but not cut from the graph: in the generator phase the
    gradient flows through it into the generator's sample.

    The discriminator built in :meth:`bind` is the attribute ``discriminator`` (state-dict keys
    ``discriminator.*``); checkpoints written when it was named ``disc_head`` load unchanged.

    Args:
        weight: lambda of this term.
        loss_type: ``non_saturating`` or ``hinge``.
        feature_layers: module names of the teacher (diffusers names, e.g. ``down_blocks.1``, ``mid_block``);
            ``None``: three layers at distinct spatial scales
            (:func:`~avdm.models.feature_discriminator.default_feature_layers`).
        head_channels, head_layers, temporal_kernel: see :class:`MultiScaleDiscriminatorHead`.
        probe_shape, text_dim: the dummy input ``(C, F, H, W)`` and text width used in ``bind`` to read the
            feature channels; ``None`` reads them from the teacher's diffusers config.
    """

    def __init__(
        self,
        weight: float = 1.0,
        loss_type: str = "non_saturating",
        feature_layers: Sequence[str] | None = None,
        head_channels: int = 64,
        head_layers: int = 2,
        temporal_kernel: int = 3,
        probe_shape: Sequence[int] | None = None,
        text_dim: int | None = None,
    ) -> None:
        super().__init__(weight)
        check_choice("loss_type", loss_type, GAN_LOSSES)
        if feature_layers is not None and len(feature_layers) == 0:
            raise ValueError("feature_layers must be null or a non-empty list of module names")
        check_parameters(
            self, head_channels=head_channels, head_layers=head_layers, temporal_kernel=temporal_kernel
        )
        if probe_shape is not None and (len(probe_shape) != 4 or min(probe_shape) < 1):
            raise ValueError(f"probe_shape must be (C, F, H, W) of positive ints, got {list(probe_shape)}")
        self.loss_type = loss_type
        self.feature_layers = list(feature_layers) if feature_layers is not None else None
        self.head_channels, self.head_layers = head_channels, head_layers
        self.temporal_kernel = temporal_kernel
        self.probe_shape = list(probe_shape) if probe_shape is not None else None
        self.text_dim = text_dim
        self.discriminator: FeatureDiscriminator | None = None

    def bind(self, teachers: TeacherBank) -> None:
        """Pick the feature layers and build the head from their channel counts (one dummy forward)."""
        self.discriminator = FeatureDiscriminator.on_teacher(
            teachers.video,
            self.feature_layers,
            self.head_channels,
            self.head_layers,
            self.temporal_kernel,
            self.probe_shape,
            self.text_dim,
        )
        self.feature_layers = self.discriminator.feature_layers

    def rename_legacy_keys(self, state_dict: MutableMapping[str, Any], prefix: str) -> None:
        """``<prefix>disc_head.*`` (the attribute's name before it was ``discriminator``) ->
        ``<prefix>discriminator.*``, in place."""
        old, new = f"{prefix}disc_head.", f"{prefix}discriminator."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[new + key[len(old) :]] = state_dict.pop(key)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: Mapping[str, Any], *args: Any
    ) -> None:
        # ``state_dict`` is load_state_dict's own copy; the children load after this, from renamed keys.
        self.rename_legacy_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def discriminate(self, teacher: Denoiser, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Logits ``(B, N)`` of :meth:`FeatureDiscriminator.discriminate` (the head is constant for G)."""
        if self.discriminator is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(teachers) before computing losses")
        return self.discriminator.discriminate(teacher, x_t, t, text)

    def adversarial_generator_loss(
        self, teacher: Denoiser, x_fake: Tensor, t: Tensor, text: Tensor
    ) -> LossOutput:
        """Eq. 7 on fake inputs ``(B, C, F, H, W)`` (with gradient) at times ``t (B,)``."""
        logits = self.discriminate(teacher, x_fake, t, text)
        loss = gan_generator_loss(logits, self.loss_type)
        return LossOutput(loss, {"loss": loss.detach(), "logits_fake": logits.detach().mean()})

    def adversarial_critic_loss(
        self, teacher: Denoiser, x_real: Tensor, x_fake: Tensor, t_real: Tensor, t_fake: Tensor, text: Tensor
    ) -> LossOutput:
        """Eq. 6 with real and (detached) fake inputs ``(B, C, F, H, W)`` in one batched forward."""
        if x_real.shape != x_fake.shape:
            raise ValueError(
                f"real and fake inputs must have the same shape (B, C, F, H, W), got real "
                f"{tuple(x_real.shape)} and fake {tuple(x_fake.shape)}"
            )
        logits = self.discriminate(
            teacher,
            torch.cat([x_real, x_fake.detach()]),
            torch.cat([t_real, t_fake]),
            torch.cat([text, text]),
        )
        logits_real, logits_fake = logits.chunk(2)
        loss = gan_critic_loss(logits_real, logits_fake, self.loss_type)
        return LossOutput(
            loss,
            {
                "loss": loss.detach(),
                "logits_real": logits_real.detach().mean(),
                "logits_fake": logits_fake.detach().mean(),
            },
        )


class DenoisingGANLoss(FeatureGANLoss):
    """AVDM2's ADM term: a denoising GAN on forward-noised clips, ``t ~ U[t_min, t_max]`` (paper: [0, 0.5]).

    Generator phase: ``x~_t = alpha_t x0_fake + sigma_t eps'`` (teacher schedule), loss eq. 7.
    Critic phase: ``ctx.batch["latents"]`` (real clips, same shape as ``x0_fake``) and the detached fakes,
    each noised with its own ``t`` and noise, through the discriminator in one batch; loss eq. 6. Both use
    ``ctx.text`` (the prompts of the batch) as the discriminator's text condition.

    Args:
        weight: lambda_ADM.
        t_min, t_max: normalized noise-level range ``[t_gmin, t_gmax]``.
        discriminator: ``loss_type``, ``feature_layers``, ``head_channels``, ``head_layers``,
            ``temporal_kernel``, ``probe_shape``, ``text_dim`` of :class:`FeatureGANLoss`.
    """

    def __init__(
        self, weight: float = 1.0, t_min: float = 0.0, t_max: float = 0.5, **discriminator: Any
    ) -> None:
        super().__init__(weight, **discriminator)
        check_t_range(t_min, t_max, self)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _noised(self, teacher: Denoiser, x0: Tensor) -> tuple[Tensor, Tensor]:
        t = teacher.schedule.sample_t(x0.shape[0], self.t_min, self.t_max, device=x0.device)
        return teacher.schedule.add_noise(x0, torch.randn_like(x0), t), t

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        teacher = ctx.teachers.video
        x_t, t = self._noised(teacher, ctx.x0_fake)
        return self.adversarial_generator_loss(teacher, x_t, t, ctx.text)

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        teacher = ctx.teachers.video
        real, fake = ctx.batch["latents"], ctx.x0_fake.detach()
        if real.shape != fake.shape:
            raise ValueError(
                f"batch['latents'] must have the shape of x0_fake {tuple(fake.shape)}, "
                f"got {tuple(real.shape)}"
            )
        x_real, t_real = self._noised(teacher, real.to(fake.dtype))
        x_fake, t_fake = self._noised(teacher, fake)
        return self.adversarial_critic_loss(teacher, x_real, x_fake, t_real, t_fake, ctx.text)
