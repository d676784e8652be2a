"""Wan-style flow-matching teachers (WanTransformer3DModel, AutoencoderKLWan, UMT5): pretrained or tiny.

The teacher family of AccVideo-style distillation: one video transformer seen through
:class:`VideoTransformerDenoiser` (and, for AVDM2's frame SDM, :class:`FrameTransformerDenoiser`) with a
:class:`~avdm.models.schedules.FlowMatchingSchedule` (velocity prediction, timestep shift), and no 2D
teacher. Its reference sampler is diffusers'
``FlowMatchEulerDiscreteScheduler`` with the same shift (``bundle.scheduler_config``).

Clip sizes: ``num_frames`` pixel frames map to ``(num_frames - 1) // temporal + 1`` latent frames
(Wan's causal VAE: 81 frames -> 21 latents); ``resolution`` pixels map to ``resolution // spatial``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from einops import rearrange
from torch import Tensor, nn

from avdm.config_schema import check_parameters
from avdm.errors import ConfigError, MissingWeightsError
from avdm.models.bundle import ModelBundle
from avdm.models.denoiser import Denoiser
from avdm.models.families import Family
from avdm.models.pretrained import load_pretrained, parse_dtype
from avdm.models.prompt_encoders import PromptEncoder, load_prompt_encoder, tiny_prompt_encoder
from avdm.models.schedules import FlowMatchingSchedule, NoiseSchedule
from avdm.models.vae import load_vae, vae_factors

# The teacher's own sampler: flow Euler, 50 steps (Wan's default).
FAMILY = Family(name="wan", reference_sampler="flow_euler", reference_steps=50)
DEFAULT_TINY_SHIFT = 3.0


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


def tiny_wan_transformer(
    patch_size: Sequence[int] = (1, 2, 2),
    num_attention_heads: int = 2,
    attention_head_dim: int = 8,
    latent_channels: int = 4,
    text_dim: int = 32,
    freq_dim: int = 32,
    ffn_dim: int = 32,
    num_layers: int = 2,
    rope_max_seq_len: int = 32,
    position_channels: int = 0,
) -> WanTransformer3DModel:
    """A small ``WanTransformer3DModel`` (same blocks as Wan2.1, a few thousand parameters per layer);
    ``position_channels`` extra input channels carry coordinates (``VideoTransformerDenoiser.position``)."""
    return WanTransformer3DModel(
        patch_size=tuple(patch_size),
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        in_channels=latent_channels + position_channels,
        out_channels=latent_channels,
        text_dim=text_dim,
        freq_dim=freq_dim,
        ffn_dim=ffn_dim,
        num_layers=num_layers,
        rope_max_seq_len=rope_max_seq_len,
    )


def tiny_wan_vae(
    base_dim: int = 8,
    latent_channels: int = 4,
    dim_mult: Sequence[int] = (1, 2),
    num_res_blocks: int = 1,
    temporal_downsample: Sequence[bool] = (False,),
) -> AutoencoderKLWan:
    """A small ``AutoencoderKLWan``: spatial factor ``2^(len(dim_mult) - 1)``, temporal
    ``2^sum(temporal_downsample)``.

    Like every Wan VAE it encodes ``1 + 4k`` pixel frames (causal chunks of 4); decoding takes any count.
    """
    if len(temporal_downsample) != len(dim_mult) - 1:
        raise ValueError(
            f"temporal_downsample needs len(dim_mult) - 1 = {len(dim_mult) - 1} entries, "
            f"got {list(temporal_downsample)}"
        )
    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=latent_channels,
        dim_mult=list(dim_mult),
        num_res_blocks=num_res_blocks,
        temperal_downsample=list(temporal_downsample),
        latents_mean=[0.0] * latent_channels,
        latents_std=[1.0] * latent_channels,
        scale_factor_temporal=2 ** sum(bool(d) for d in temporal_downsample),
        scale_factor_spatial=2 ** (len(dim_mult) - 1),
    )


def latent_shape(
    channels: int,
    num_frames: int,
    resolution: int | Sequence[int],
    vae: nn.Module,
    patch: Sequence[int],
) -> tuple[int, int, int, int]:
    """``(C, F, H, W)`` of one clip's latent; the sizes must fit the VAE factors and the patch size."""
    temporal, spatial = vae_factors(vae)
    height, width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(
            f"model.num_frames must be 1 + {temporal} k (the VAE's time factor), got {num_frames}"
        )
    frames = (num_frames - 1) // temporal + 1
    step = spatial * patch[1]
    if height % step or width % step:
        raise ValueError(
            f"model.resolution must be a multiple of {step} (VAE factor {spatial} x patch {patch[1]}), "
            f"got {height}x{width}"
        )
    if frames % patch[0]:
        raise ValueError(f"latent frames {frames} must be a multiple of the temporal patch {patch[0]}")
    return channels, frames, height // spatial, width // spatial


def _build_tiny(
    sizes: dict[str, Any], seed: int, position: int, encoders: tuple[nn.Module, PromptEncoder] | None
) -> tuple[Any, Any, PromptEncoder, dict[str, Any]]:
    torch.manual_seed(seed)
    if encoders is None:
        prompt_encoder = tiny_prompt_encoder(**dict(sizes.get("text", {})))
    else:
        prompt_encoder = encoders[1]
    text_width = prompt_encoder.text_encoder.config.hidden_size
    transformer_sizes = dict(sizes.get("transformer", {}))
    transformer_sizes.setdefault("text_dim", text_width)
    transformer_sizes.setdefault("position_channels", position)
    transformer = tiny_wan_transformer(**transformer_sizes)
    if encoders is None:
        vae_sizes = dict(sizes.get("vae", {}))
        vae_sizes.setdefault("latent_channels", transformer.config.out_channels)
        vae = tiny_wan_vae(**vae_sizes)
    else:
        vae = encoders[0]
    scheduler_config = dict(FlowMatchEulerDiscreteScheduler(shift=DEFAULT_TINY_SHIFT).config)
    return transformer, vae, prompt_encoder, scheduler_config


def _build_pretrained(
    p: dict[str, Any], load_encoders: bool = True
) -> tuple[Any, Any, PromptEncoder | None, dict[str, Any], dict[str, str]]:
    base = p.get("base_model")
    if not base:
        raise ValueError("model.pretrained.base_model must name a hub id or local folder")
    dtype = parse_dtype(p.get("dtype", "float32"))
    local = bool(p.get("local_files_only", False))
    key = "model.pretrained.base_model"
    transformer = load_pretrained(
        "the Wan transformer",
        key,
        WanTransformer3DModel.from_pretrained,
        base,
        subfolder="transformer",
        torch_dtype=dtype,
        local_files_only=local,
    )
    sources = {"teacher": base}
    vae, prompt_encoder = None, None
    if load_encoders:
        vae, prompt_encoder = _pretrained_encoders(p, base, dtype, local, sources)
    scheduler_config = dict(
        load_pretrained(
            "the scheduler config",
            key,
            FlowMatchEulerDiscreteScheduler.load_config,
            base,
            subfolder="scheduler",
            local_files_only=local,
        )
    )
    return transformer, vae, prompt_encoder, scheduler_config, sources


def _pretrained_encoders(
    p: dict[str, Any], base: str, dtype: torch.dtype, local: bool, sources: dict[str, str]
) -> tuple[nn.Module, PromptEncoder]:
    key = "model.pretrained.base_model"
    vae_src = p.get("vae") or base
    # Wan's VAE is numerically fragile in half precision; its pipeline keeps it in fp32.
    vae = load_vae(
        vae_src,
        None if p.get("vae") else "vae",
        "model.pretrained.vae" if p.get("vae") else key,
        parse_dtype(p.get("vae_dtype", "float32")),
        local,
    )
    text_src = p.get("text_encoder") or base
    prompt_encoder = load_prompt_encoder(
        text_src,
        "model.pretrained.text_encoder" if p.get("text_encoder") else key,
        parse_dtype(p.get("text_encoder_dtype") or p.get("dtype", "float32")),
        local,
        p.get("max_text_length"),
    )
    sources.update(vae=vae_src, text_encoder=text_src)
    return vae, prompt_encoder


def _encoders_from(folder: str, local: bool = True) -> tuple[nn.Module, PromptEncoder]:
    """The VAE and the prompt encoder of a diffusers folder (``vae/``, ``text_encoder/``, ``tokenizer/``)."""
    if not Path(folder).expanduser().is_dir():
        raise MissingWeightsError(
            f"Missing the encoders folder: the local path '{folder}' does not exist; "
            "set model.encoders=/path/to/a/diffusers/folder (with vae/, text_encoder/, tokenizer/)."
        )
    vae = load_vae(folder, "vae", "model.encoders", torch.float32, local)
    return vae, load_prompt_encoder(folder, "model.encoders", torch.float32, local, None)


def _parts(
    source: str,
    pretrained: dict[str, Any] | None,
    tiny: dict[str, Any] | None,
    seed: int,
    position: int,
    encoders: str | None,
) -> tuple[Any, Any, PromptEncoder, dict[str, Any], dict[str, str]]:
    """Transformer, VAE, prompt encoder, loaded scheduler config and sources; ``encoders`` (a folder)
    replaces the VAE and prompt encoder. The transformer's ``text_dim`` must match the text width."""
    shared = _encoders_from(encoders) if encoders else None
    if source == "tiny":
        transformer, vae, prompt_encoder, loaded_scheduler = _build_tiny(
            dict(tiny or {}), seed, position, shared
        )
        sources = {"teacher": f"tiny (random init, seed {seed})"}
    else:
        built = _build_pretrained(dict(pretrained or {}), load_encoders=shared is None)
        transformer, vae, prompt_encoder, loaded_scheduler, sources = built
    if shared is not None:
        vae, prompt_encoder = shared
        sources.update(vae=str(encoders), text_encoder=str(encoders))
    text_width = prompt_encoder.text_encoder.config.hidden_size
    if transformer.config.text_dim != text_width:
        raise ValueError(
            f"the transformer's text_dim={transformer.config.text_dim} must equal the text encoder's width "
            f"{text_width} (model.tiny.transformer.text_dim / model.tiny.text.hidden_size / model.encoders)"
        )
    return transformer, vae, prompt_encoder, loaded_scheduler, sources


def build_wan(
    source: str = "tiny",
    pretrained: dict[str, Any] | None = None,
    tiny: dict[str, Any] | None = None,
    shift: float | None = None,
    num_frames: int = 81,
    resolution: int | Sequence[int] = (480, 832),
    seed: int = 0,
    encoders: str | None = None,
    position: Sequence[str] = (),
    image_teacher: str = "none",
    teacher_dtype: str = "float32",
) -> ModelBundle:
    """Build a Wan-style flow-matching teacher family.

    Args:
        source: ``pretrained`` (a diffusers folder or hub id: subfolders ``transformer``, ``vae``,
            ``text_encoder``, ``tokenizer``, ``scheduler``) or ``tiny`` (random weights, sizes under
            ``tiny``).
        pretrained: ``base_model``; optional ``vae`` (a separate VAE folder: ``AutoencoderKLWan``, or an
            image ``AutoencoderKL`` run per frame), ``text_encoder`` (a separate folder with
            ``text_encoder/`` + ``tokenizer/``: UMT5 or CLIP), ``dtype`` (the transformer),
            ``text_encoder_dtype`` (default: ``dtype``), ``vae_dtype`` (default float32),
            ``max_text_length`` (default: 512 for UMT5, the tokenizer's for CLIP), ``local_files_only``.
        tiny: keyword sizes for :func:`tiny_wan_transformer` (``transformer``), :func:`tiny_wan_vae` (``vae``)
            and :func:`~avdm.models.prompt_encoders.tiny_prompt_encoder` (``text``); the transformer's
            ``text_dim`` follows the text encoder's width.
        shift: the flow timestep shift of the teacher's schedule and sampler; ``None`` reads it from the
            teacher's scheduler config (``flow_shift`` / ``shift``; tiny: 3.0).
        num_frames: pixel frames per clip (``1 + 4k`` for Wan's VAE; image VAEs and tiny VAEs with time
            factor 1 take any count).
        resolution: pixels, ``H = W`` or ``[H, W]``; a multiple of VAE factor x patch size.
        seed: initialization seed of tiny models.
        encoders: a diffusers folder whose ``vae/``, ``text_encoder/`` and ``tokenizer/`` replace the
            tiny (or the base model's) VAE and prompt encoder, e.g. the shipped shapes teacher's.
        position: coordinate channels fed to the transformer besides the latent (``frame``, ``y``, ``x``;
            :class:`~avdm.models.denoiser.VideoTransformerDenoiser`); a tiny transformer is built with
            that many extra input channels.
        image_teacher: ``none`` or ``shared``: the same transformer on one-frame clips
            (:class:`~avdm.models.denoiser.FrameTransformerDenoiser`), the 2D teacher of AVDM2's frame SDM.
        teacher_dtype: ``float32``, ``bfloat16`` or ``float16``: the frozen roles during distillation
            (the trainable copies keep float32; :class:`~avdm.models.bundle.ModelBundle`).

    Returns:
        A :class:`ModelBundle` and a ``FlowMatchEulerDiscreteScheduler`` ``scheduler_config`` whose ``shift``
        equals the teacher schedule's.
    """
    if image_teacher not in ("none", "shared"):
        raise ConfigError(f"model.image_teacher must be 'none' or 'shared', got {image_teacher!r}")
    position = tuple(position or ())
    if source not in ("tiny", "pretrained"):
        raise ValueError(f"model.source must be 'pretrained' or 'tiny', got {source!r}")
    check_parameters(build_wan, "model", num_frames=num_frames, resolution=resolution)
    transformer, vae, prompt_encoder, loaded_scheduler, sources = _parts(
        source, pretrained, tiny, seed, len(position), encoders
    )
    schedule = FlowMatchingSchedule.from_scheduler_config(
        loaded_scheduler, None if shift is None else float(shift)
    )
    scheduler_config = dict(
        FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=schedule.num_train_timesteps, shift=schedule.shift
        ).config
    )
    video = VideoTransformerDenoiser(transformer, schedule, position)
    image = None
    if image_teacher == "shared":
        image = FrameTransformerDenoiser(transformer, schedule, position)
        image.temporal_compression = vae_factors(vae)[0]
        sources["image_teacher"] = "shared with the video teacher (one-frame clips)"
    else:
        sources["image_teacher"] = "none"
    shape = latent_shape(
        transformer.config.out_channels, num_frames, resolution, vae, transformer.config.patch_size
    )
    return ModelBundle(
        FAMILY, video, image, prompt_encoder, vae, scheduler_config, sources, shape, teacher_dtype
    )
