"""The feature discriminator: a frozen teacher's encoder features at chosen layers + a trainable head.

AVDM2's denoising GAN (Sec. 4.1) and AccVideo's timestep-aware GAN both judge noisy latents through the
frozen video teacher: the features of a few of its layers feed a
:class:`~avdm.models.heads.MultiScaleDiscriminatorHead`. This module picks those layers (by probing the
teacher once with a dummy input) and runs the judgement; the losses only decide what is real and fake.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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


class FeatureDiscriminator(MultiScaleDiscriminatorHead):
    """The trainable head over the frozen teacher features at ``feature_layers``.

    Built with :meth:`on_teacher`, which reads each layer's channel count from one dummy forward. Only the
    head's parameters are trainable; the teacher is passed in at every call and never owned.

    Args:
        feature_layers: module names of the teacher whose features the head reads, shallow to deep.
        in_channels, text_dim, hidden_channels, num_layers, temporal_kernel: see
            :class:`~avdm.models.heads.MultiScaleDiscriminatorHead`.
    """

    def __init__(
        self,
        feature_layers: Sequence[str],
        in_channels: Sequence[int],
        text_dim: int,
        hidden_channels: int = 64,
        num_layers: int = 2,
        temporal_kernel: int = 3,
    ) -> None:
        super().__init__(in_channels, text_dim, hidden_channels, num_layers, temporal_kernel)
        self.feature_layers = list(feature_layers)

    @classmethod
    def on_teacher(
        cls,
        teacher: Denoiser,
        feature_layers: Sequence[str] | None = None,
        hidden_channels: int = 64,
        num_layers: int = 2,
        temporal_kernel: int = 3,
        probe_shape: Sequence[int] | None = None,
        text_dim: int | None = None,
    ) -> FeatureDiscriminator:
        """Pick the layers (``None``: :func:`default_feature_layers` of the teacher's candidates) and build
        the head from their channel counts, on the teacher's device."""
        x_t, t, text = probe_inputs(teacher, probe_shape, text_dim)
        candidates = list(feature_layers or teacher.default_feature_layers)
        with torch.no_grad():
            shapes = [f.shape for f in teacher.encoder_features(x_t, t, text, candidates)]
        layers = candidates
        if feature_layers is None:
            layers = default_feature_layers(candidates, shapes)
            shapes = [shapes[candidates.index(name)] for name in layers]
        head = cls(
            layers, [s[1] for s in shapes], text.shape[-1], hidden_channels, num_layers, temporal_kernel
        )
        return head.to(x_t.device)

    def discriminate(self, teacher: Denoiser, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Logits ``(B, N)`` of noisy inputs ``x_t (B, C, F, H, W)`` at times ``t (B,)``.

        Generator phase (``x_t`` requires grad): the gradient flows through the frozen teacher and the head
        into ``x_t``, with the head's parameters taken as constants, so the generator's backward leaves no
        gradient on the critic whatever the caller toggles. Critic phase: the teacher runs without a graph
        and only the head is trained.
        """
        generator_phase = torch.is_grad_enabled() and x_t.requires_grad
        with torch.set_grad_enabled(generator_phase):
            features = teacher.encoder_features(x_t, t, text, self.feature_layers)
        if not generator_phase:
            return self(features, t, text)
        constants = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, constants, (features, t, text))
