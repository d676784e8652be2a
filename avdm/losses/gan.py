"""Adversarial distribution matching (AVDM2 Sec. 4.1, eqs. 6-7): a denoising GAN whose discriminator is
the frozen video teacher's encoder plus a trainable :class:`~avdm.models.heads.MultiScaleDiscriminatorHead`.

:class:`FeatureGANLoss` holds what every teacher-feature discriminator needs (layer choice, head
construction in ``bind``, the batched real/fake pass); :class:`DenoisingGANLoss` adds AVDM2's inputs
(forward-noised real clips and generator samples). AccVideo's timestep-aware discriminator
(:class:`~avdm.losses.trajectory.TrajectoryGANLoss`) reuses the same base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from avdm.losses.base import DistillationLoss, LossOutput, StepContext, TeacherBank
from avdm.losses.functional import (
    GAN_LOSSES,
    check_choice,
    check_t_range,
    gan_critic_loss,
    gan_generator_loss,
)
from avdm.models.denoiser import Denoiser
from avdm.models.heads import MultiScaleDiscriminatorHead


def _config_get(model: torch.nn.Module, key: str) -> object:
    config = getattr(model, "config", None)
    if config is None:
        return None
    return config.get(key) if hasattr(config, "get") else getattr(config, key, None)


def probe_inputs(
    denoiser: Denoiser, probe_shape: Sequence[int] | None = None, text_dim: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A small dummy input ``(x_t (1, C, F, H, W), t (1,), text (1, 1, D))`` for shape probing.

    Defaults read the diffusers config of ``denoiser.model``: ``out_channels`` (the latent's);
    ``cross_attention_dim`` (UNets) or ``text_dim`` (Wan); ``F = 2``; ``H = W = 2^len(block_out_channels)``
    (UNets, so the deepest level is 2x2) or ``4 x`` the patch size (transformers).
    """
    model = denoiser.model
    if text_dim is None:
        text_dim = _config_get(model, "cross_attention_dim") or _config_get(model, "text_dim")
    if probe_shape is None:
        # The latent's channels: a transformer may take more inputs (coordinate or conditioning channels).
        channels = _config_get(model, "out_channels") or _config_get(model, "in_channels")
        blocks, patch = _config_get(model, "block_out_channels"), _config_get(model, "patch_size")
        if blocks is not None:
            probe_shape = (channels, 2, 2 ** len(blocks), 2 ** len(blocks))
        elif isinstance(patch, Sequence):
            probe_shape = (channels, 2 * patch[0], 4 * patch[1], 4 * patch[2])
    if not isinstance(text_dim, int) or probe_shape is None or None in probe_shape:
        raise ValueError(
            f"cannot read the probe input of {type(model).__name__} from its config: set "
            "probe_shape (C, F, H, W) and text_dim explicitly"
        )
    param = next(denoiser.parameters())
    x_t = torch.randn(1, *probe_shape, device=param.device, dtype=param.dtype)
    return (
        x_t,
        torch.full((1,), 0.5, device=param.device),
        torch.zeros(1, 1, text_dim, device=param.device, dtype=param.dtype),
    )


def default_feature_layers(names: Sequence[str], shapes: Sequence[torch.Size], count: int = 3) -> list[str]:
    """``count`` layers at distinct spatial scales: the deepest layer of each of the ``count`` coarsest
    spatial sizes, completed with the deepest remaining layers when there are fewer scales.

    Args:
        names: candidate layers, shallow to deep.
        shapes: their feature shapes ``(B, C, F, H, W)``.
    """
    deepest: dict[tuple[int, int], int] = {}
    for i, shape in enumerate(shapes):
        deepest[(shape[-2], shape[-1])] = i
    by_size = sorted(deepest.items(), key=lambda kv: kv[0][0] * kv[0][1])
    chosen = [i for _, i in by_size[:count]]
    for i in reversed(range(len(names))):
        if len(chosen) >= count:
            break
        if i not in chosen:
            chosen.append(i)
    return [names[i] for i in sorted(chosen)]


class FeatureGANLoss(DistillationLoss):
    """A GAN whose discriminator is frozen ``teachers.video`` features + a trainable multi-scale head.

    Subclasses decide what is real and what is fake (:meth:`generator_loss`, :meth:`critic_loss`) and call
    :meth:`discriminate`. The teacher is frozen but not cut from the graph: in the generator phase the
    gradient flows through it into the generator's sample.

    Args:
        weight: lambda of this term.
        loss_type: ``non_saturating`` or ``hinge``.
        feature_layers: module names of the teacher (diffusers names, e.g. ``down_blocks.1``, ``mid_block``);
            ``None``: three layers at distinct spatial scales (:func:`default_feature_layers`).
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
        if head_channels < 1 or head_layers < 1:
            raise ValueError(
                f"head_channels and head_layers must be >= 1, got {head_channels}, {head_layers}"
            )
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be an odd int >= 1, got {temporal_kernel}")
        if probe_shape is not None and (len(probe_shape) != 4 or min(probe_shape) < 1):
            raise ValueError(f"probe_shape must be (C, F, H, W) of positive ints, got {list(probe_shape)}")
        self.loss_type = loss_type
        self.feature_layers = list(feature_layers) if feature_layers is not None else None
        self.head_channels, self.head_layers = head_channels, head_layers
        self.temporal_kernel = temporal_kernel
        self.probe_shape = list(probe_shape) if probe_shape is not None else None
        self.text_dim = text_dim
        self.disc_head: MultiScaleDiscriminatorHead | None = None

    def bind(self, teachers: TeacherBank) -> None:
        """Pick the feature layers and build the head from their channel counts (one dummy forward)."""
        teacher = teachers.video
        x_t, t, text = probe_inputs(teacher, self.probe_shape, self.text_dim)
        candidates = self.feature_layers or list(teacher.default_feature_layers)
        with torch.no_grad():
            shapes = [f.shape for f in teacher.encoder_features(x_t, t, text, candidates)]
        if self.feature_layers is None:
            self.feature_layers = default_feature_layers(candidates, shapes)
            shapes = [shapes[candidates.index(name)] for name in self.feature_layers]
        self.disc_head = MultiScaleDiscriminatorHead(
            [s[1] for s in shapes],
            text.shape[-1],
            self.head_channels,
            self.head_layers,
            self.temporal_kernel,
        ).to(x_t.device)

    def discriminate(self, teacher: Denoiser, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Logits ``(B, N)`` of noisy inputs ``x_t (B, C, F, H, W)`` at times ``t (B,)``.

        Generator phase (``x_t`` requires grad): the gradient flows through the frozen teacher and the head
        into ``x_t``, with the head's parameters taken as constants, so the generator's backward leaves no
        gradient on the critic whatever the caller toggles. Critic phase: the teacher runs without a graph
        and only the head is trained.
        """
        head = self.disc_head
        if head is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(teachers) before computing losses")
        generator_phase = torch.is_grad_enabled() and x_t.requires_grad
        with torch.set_grad_enabled(generator_phase):
            features = teacher.encoder_features(x_t, t, text, self.feature_layers)
        if not generator_phase:
            return head(features, t, text)
        constants = {name: p.detach() for name, p in head.named_parameters()}
        return torch.func.functional_call(head, constants, (features, t, text))

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
        loss_type, feature_layers, head_channels, head_layers, temporal_kernel, probe_shape, text_dim:
            see :class:`FeatureGANLoss`.
    """

    def __init__(
        self,
        weight: float = 1.0,
        t_min: float = 0.0,
        t_max: float = 0.5,
        loss_type: str = "non_saturating",
        feature_layers: Sequence[str] | None = None,
        head_channels: int = 64,
        head_layers: int = 2,
        temporal_kernel: int = 3,
        probe_shape: Sequence[int] | None = None,
        text_dim: int | None = None,
    ) -> None:
        super().__init__(
            weight,
            loss_type,
            feature_layers,
            head_channels,
            head_layers,
            temporal_kernel,
            probe_shape,
            text_dim,
        )
        check_t_range(t_min, t_max)
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
