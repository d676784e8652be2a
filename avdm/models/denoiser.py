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
from einops import rearrange
from torch import Tensor, nn

from avdm.errors import ConfigError
from avdm.models.feature_tap import FeatureTap
from avdm.models.schedules import NoiseSchedule


class Denoiser(nn.Module, abc.ABC):
    """A diffusers model seen as ``(x_t, t, text) -> prediction`` on ``(B, C, F, H, W)`` latents.

    Args:
        model: the diffusers network.
        schedule: the noise schedule the network was trained with.
    """

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


def _unet_feature_layers(unet: nn.Module) -> tuple[str, ...]:
    return tuple(f"down_blocks.{i}" for i in range(len(unet.down_blocks))) + ("mid_block",)


class VideoUNetDenoiser(Denoiser):
    """diffusers ``UNetMotionModel`` (AnimateDiff): SD UNet + motion modules.

    ``UNetMotionModel`` folds frames into the batch inside and wants the text embeddings already
    repeated per frame ``(B * F, L, D)``; this view does that.
    """

    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        frames = x_t.shape[2]
        text = text.repeat_interleave(frames, dim=0)
        return self.model(x_t, timestep, encoder_hidden_states=text, return_dict=False)[0]

    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        return rearrange(feature, "(b f) c h w -> b c f h w", b=x_t.shape[0])

    @property
    def default_feature_layers(self) -> tuple[str, ...]:
        return _unet_feature_layers(self.model)


class FrameUNetDenoiser(Denoiser):
    """An image model (``UNet2DConditionModel``) applied to every frame of a video latent.

    Frames are folded into the batch: ``(B, C, F, H, W) -> (B * F, C, H, W)``, text is repeated
    per frame, and the output is unfolded again. This is the 2D teacher / 2D fake score of AVDM2.
    """

    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        b, _, f = x_t.shape[:3]
        frames = rearrange(x_t, "b c f h w -> (b f) c h w")
        out = self.model(
            frames,
            timestep.repeat_interleave(f, dim=0),
            encoder_hidden_states=text.repeat_interleave(f, dim=0),
            return_dict=False,
        )[0]
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)

    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        return rearrange(feature, "(b f) c h w -> b c f h w", b=x_t.shape[0])

    @property
    def default_feature_layers(self) -> tuple[str, ...]:
        return _unet_feature_layers(self.model)


POSITION_CHANNELS = ("frame", "y", "x")


def position_channels(x_t: Tensor, axes: Sequence[str]) -> Tensor:
    """Coordinate channels ``(B, len(axes), F, H, W)`` of a latent ``x_t (B, C, F, H, W)``.

    Each named axis (``frame``, ``y``, ``x``) gets ``linspace(-1, 1, n)`` along itself, constant along the
    others; an axis of length 1 gets 0 (a single frame has no place in time).
    """
    b, _, f, h, w = x_t.shape
    sizes = {"frame": (f, 2), "y": (h, 3), "x": (w, 4)}
    channels = []
    for axis in axes:
        n, dim = sizes[axis]
        ramp = torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)
        shape = [1, 1, 1, 1, 1]
        shape[dim] = n
        channels.append(ramp.view(shape).to(x_t).expand(b, 1, f, h, w))
    return torch.cat(channels, dim=1)


class VideoTransformerDenoiser(Denoiser):
    """A flow-matching video transformer on ``(B, C, F, H, W)`` latents (diffusers Wan layout).

    Feature layers are transformer blocks; their token sequences ``(B, F' H' W', D)`` are unfolded
    to ``(B, D, F', H', W')`` with the model's patch size.

    Args:
        model: a ``WanTransformer3DModel``.
        schedule: its flow-matching schedule.
        position: coordinate channels (``frame``, ``y``, ``x``; see :func:`position_channels`)
            concatenated to the latent before the patch embedding, as Wan's image-to-video model
            concatenates its conditioning channels (``in_channels = out_channels + len(position)``).
            Wan's rotary embedding is relative only; these give the network absolute places in time
            and space, which a prompt like "moving left" needs from pure noise (where in the frame the
            object starts, where it ends).
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, position: Sequence[str] = ()) -> None:
        super().__init__(model, schedule)
        unknown = [a for a in position if a not in POSITION_CHANNELS]
        if unknown or len(set(position)) != len(position):
            raise ConfigError(
                f"model.position must be distinct names from {POSITION_CHANNELS}, got {list(position)}"
            )
        cfg = model.config
        if cfg.in_channels != cfg.out_channels + len(position):
            raise ConfigError(
                f"the transformer takes {cfg.in_channels} input channels and predicts {cfg.out_channels}: "
                f"model.position must name {cfg.in_channels - cfg.out_channels} coordinate channel(s), "
                f"got {list(position)}"
            )
        self.position = tuple(position)

    def _model_input(self, x_t: Tensor) -> Tensor:
        if not self.position:
            return x_t
        return torch.cat([x_t, position_channels(x_t, self.position)], dim=1)

    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        return self.model(self._model_input(x_t), timestep, encoder_hidden_states=text, return_dict=False)[0]

    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        pf, ph, pw = self.model.config.patch_size
        f, h, w = x_t.shape[2] // pf, x_t.shape[3] // ph, x_t.shape[4] // pw
        return rearrange(feature, "b (f h w) d -> b d f h w", f=f, h=h, w=w)

    @property
    def default_feature_layers(self) -> tuple[str, ...]:
        n = len(self.model.blocks)
        return tuple(f"blocks.{i}" for i in sorted({0, n // 2, n - 1}))


class FrameTransformerDenoiser(VideoTransformerDenoiser):
    """The video transformer applied to every frame as a one-frame clip: the 2D (image) view of a
    Wan-style teacher, sharing every weight with it (Wan is trained jointly on images and videos).

    ``(B, C, F, H, W)`` is folded to ``(B * F, C, 1, H, W)``, text repeated per frame; features unfold to
    ``(B, D, F, H', W')``.
    """

    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        b, _, f = x_t.shape[:3]
        frames = rearrange(x_t, "b c f h w -> (b f) c 1 h w")
        out = super()._call_model(
            frames, timestep.repeat_interleave(f, dim=0), text.repeat_interleave(f, dim=0)
        )
        return rearrange(out, "(b f) c 1 h w -> b c f h w", b=b)

    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        _, ph, pw = self.model.config.patch_size
        h, w = x_t.shape[3] // ph, x_t.shape[4] // pw
        return rearrange(feature, "(b f) (h w) d -> b d f h w", b=x_t.shape[0], h=h, w=w)


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
