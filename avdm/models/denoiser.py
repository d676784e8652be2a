"""One denoiser view over diffusers models.

Every model role (teacher, generator, fake score, discriminator encoder) is seen as
``D(x_t, t, text) -> raw prediction`` on video latents ``(B, C, F, H, W)``, with normalized time
``t: (B,)`` in [0, 1] and text embeddings ``(B, L, D)``. The raw prediction is in the model's own
parameterization (``schedule.prediction_type``); :meth:`Denoiser.x0` / :meth:`Denoiser.eps` convert.

The wrapped diffusers model stays reachable as ``.model`` under its own module names, so configs
name feature layers exactly as diffusers does (``down_blocks.2``, ``mid_block``, ``blocks.3``).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from avdm.models.feature_tap import FeatureTap
from avdm.models.schedules import NoiseSchedule


class Denoiser(nn.Module, abc.ABC):
    """A diffusers model seen as ``(x_t, t, text) -> prediction`` on ``(B, C, F, H, W)`` latents.

    Args:
        model: the diffusers network.
        schedule: the noise schedule the network was trained with.
    """

    #: Pixel frames per latent frame after the first, of the VAE whose latents this view denoises (Wan's
    #: causal VAE: 4; a per-frame VAE: 1). A 2D view of a video teacher with ``> 1`` was trained on image
    #: latents, which only latent frame 0 of a video is (the causal encoder sees the first frame alone).
    temporal_compression: int = 1

    def __init__(self, model: nn.Module, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule

    @abc.abstractmethod
    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        """Run the network: ``x_t (B, C, F, H, W)``, network timesteps ``(B,)``, ``text (B, L, D)``."""

    @abc.abstractmethod
    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        """Reshape one tapped activation to ``(B, C_i, F_i, H_i, W_i)``."""

    @property
    @abc.abstractmethod
    def default_feature_layers(self) -> tuple[str, ...]:
        """Module names of the encoder features, shallow to deep."""

    def forward(self, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Raw prediction ``(B, C, F, H, W)`` in the model's parameterization."""
        if x_t.ndim != 5:
            raise ValueError(f"x_t must be a video latent (B, C, F, H, W), got shape {tuple(x_t.shape)}")
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        model_dtype = next(self.model.parameters()).dtype
        timestep = self.schedule.timestep(t)
        out = self._call_model(x_t.to(model_dtype), timestep, text.to(model_dtype))
        return out.to(x_t.dtype)

    def x0(self, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Clean-sample estimate ``x0_hat(x_t, t)``, ``(B, C, F, H, W)``."""
        return self.schedule.to_x0(self(x_t, t, text), x_t, t)

    def eps(self, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Noise estimate ``eps_hat(x_t, t)``, ``(B, C, F, H, W)``."""
        return self.schedule.to_eps(self(x_t, t, text), x_t, t)

    def encoder_features(
        self, x_t: Tensor, t: Tensor, text: Tensor, layers: Sequence[str] | None = None
    ) -> list[Tensor]:
        """Activations of ``layers`` (default: down blocks + mid block), each ``(B, C_i, F_i, H_i, W_i)``.

        The forward pass stops after the deepest requested layer, so the decoder is never run; except
        under FSDP2, whose hooks must see every sharded unit's forward end.
        """
        from torch.distributed.fsdp import FSDPModule

        layers = tuple(layers or self.default_feature_layers)
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        sharded = any(isinstance(m, FSDPModule) for m in self.model.modules())
        with FeatureTap(self.model, layers, stop_after_last=not sharded) as tap:
            tap.run(self.forward, x_t, t, text)
        return [self._feature_to_video(tap.features[name], x_t) for name in layers]


def freeze_(module: nn.Module) -> nn.Module:
    """Freeze a teacher in place: no gradients, eval mode. Its owner keeps it in eval when
    Lightning calls ``train()`` (see ``DistillationModule.train``)."""
    module.requires_grad_(False)
    return module.eval()


def trainable_copy(denoiser: Denoiser) -> Denoiser:
    """A deep copy with every parameter trainable, in train mode (the generator, fake scores)."""
    return copy.deepcopy(denoiser).requires_grad_(True).train()


@torch.no_grad()
def count_parameter_storage(*modules: nn.Module) -> int:
    """Number of distinct parameter storages across ``modules`` (shared weights count once)."""
    return len({p.untyped_storage().data_ptr() for m in modules for p in m.parameters()})


def parameter_bytes(params: Iterable[nn.Parameter], element_size: int | None = None) -> int:
    """Bytes of the distinct storages of ``params`` (shared weights count once); ``element_size``: count
    each element as that many bytes instead of its dtype's (e.g. 4 for float32 gradients or AdamW moments)."""
    storages = {p.untyped_storage().data_ptr(): p for p in params}
    return sum(p.numel() * (element_size or p.element_size()) for p in storages.values())
