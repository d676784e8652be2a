"""AnimateDiff teachers (SD1.5 UNet + motion adapter), pretrained or tiny, with shared teacher roles.

In AnimateDiff the image model *is* the video model's spatial UNet. :func:`spatial_unet` exposes
it as a ``UNet2DConditionModel`` whose submodules are the very modules of the ``UNetMotionModel``
(motion modules left out), so the real video score, the real 2D score and the discriminator
encoder all run on one frozen copy of the weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from einops import rearrange
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

from avdm.config_schema import check_parameters
from avdm.models.bundle import ModelBundle
from avdm.models.denoiser import Denoiser
from avdm.models.families import Family
from avdm.models.pretrained import load_pretrained, parse_dtype
from avdm.models.prompt_encoders import PromptEncoder, tiny_prompt_encoder
from avdm.models.schedules import DDPMSchedule

# The teacher's own sampler: DDIM, 25 steps (AnimateDiff's default).
FAMILY = Family(name="animatediff", reference_sampler="ddim", reference_steps=25)

_TO_2D_BLOCK = {
    "CrossAttnDownBlockMotion": "CrossAttnDownBlock2D",
    "DownBlockMotion": "DownBlock2D",
    "CrossAttnUpBlockMotion": "CrossAttnUpBlock2D",
    "UpBlockMotion": "UpBlock2D",
}

# The scheduler of SD1.5 pipelines (scheduler/scheduler_config.json), used for tiny teachers.
SD15_SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


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


def spatial_unet(motion_unet: UNetMotionModel) -> UNet2DConditionModel:
    """The image UNet inside an AnimateDiff ``UNetMotionModel``, sharing its modules (no copy).

    Returns:
        A ``UNet2DConditionModel`` whose every parameter is a parameter of ``motion_unet``.
    """
    cfg = dict(motion_unet.config)
    cfg["down_block_types"] = [_TO_2D_BLOCK[b] for b in cfg["down_block_types"]]
    cfg["up_block_types"] = [_TO_2D_BLOCK[b] for b in cfg["up_block_types"]]
    cfg["mid_block_type"] = "UNetMidBlock2DCrossAttn"
    # SD configs call the head count "attention_head_dim"; UNetMotionModel renamed it.
    cfg["attention_head_dim"] = cfg.pop("num_attention_heads")
    accepted = inspect.signature(UNet2DConditionModel.__init__).parameters
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({k: v for k, v in cfg.items() if k in accepted})

    blocks = {"down_blocks", "up_blocks", "mid_block"}
    for name, _ in list(unet.named_children()):
        if name not in blocks:
            setattr(unet, name, getattr(motion_unet, name))
    pairs = [
        *zip(unet.down_blocks, motion_unet.down_blocks),
        *zip(unet.up_blocks, motion_unet.up_blocks),
        (unet.mid_block, motion_unet.mid_block),
    ]
    for block_2d, block_motion in pairs:
        for name, _ in list(block_2d.named_children()):
            setattr(block_2d, name, getattr(block_motion, name))

    # Every tensor must be one of the motion UNet's (by identity: on the meta device all of them are meta).
    owned = {id(t) for t in (*motion_unet.parameters(), *motion_unet.buffers())}
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if id(t) not in owned]
    if left:
        raise RuntimeError(f"spatial_unet: {left[:5]} have no counterpart in {type(motion_unet).__name__}")
    return unet


def tiny_motion_unet(
    block_out_channels: Sequence[int] = (32, 64),
    layers_per_block: int = 1,
    cross_attention_dim: int = 32,
    attention_heads: int = 2,
    motion_attention_heads: int = 2,
    norm_num_groups: int = 8,
    latent_channels: int = 4,
    sample_size: int = 16,
    motion_max_seq_length: int = 32,
    zero_init_motion_out: bool = False,
) -> UNetMotionModel:
    """A small AnimateDiff UNet built the way real ones are: a 2D UNet + a motion adapter.

    With ``zero_init_motion_out`` every motion module's output projection starts at zero, as in
    AnimateDiff's training: each module is then the identity and the UNet is exactly the image UNet
    run per frame, until the motion modules are trained.
    """
    n = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_heads,
        norm_num_groups=norm_num_groups,
    )
    adapter = MotionAdapter(
        block_out_channels=tuple(block_out_channels),
        motion_layers_per_block=layers_per_block,  # UNetMotionModel requires equality
        motion_num_attention_heads=motion_attention_heads,
        motion_norm_num_groups=norm_num_groups,
        motion_max_seq_length=motion_max_seq_length,
    )
    motion = UNetMotionModel.from_unet2d(unet, adapter)
    if zero_init_motion_out:
        for name, module in motion.named_modules():
            if "motion_modules" in name and name.endswith("proj_out"):
                torch.nn.init.zeros_(module.weight)
                torch.nn.init.zeros_(module.bias)
    return motion


def tiny_vae(
    block_out_channels: Sequence[int] = (16, 32), latent_channels: int = 4, norm_num_groups: int = 8
) -> AutoencoderKL:
    """A small SD-style VAE (downsampling 2^(len-1))."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        norm_num_groups=norm_num_groups,
    )


def _schedule(scheduler_config: dict[str, Any], override: dict[str, Any] | None) -> DDPMSchedule:
    return DDPMSchedule.from_scheduler_config({**scheduler_config, **(override or {})})


def build_animatediff(
    source: str = "tiny",
    pretrained: dict[str, Any] | None = None,
    tiny: dict[str, Any] | None = None,
    image_teacher: str = "shared",
    video_schedule: dict[str, Any] | None = None,
    image_schedule: dict[str, Any] | None = None,
    num_frames: int = 16,
    resolution: int = 512,
    seed: int = 0,
    teacher_dtype: str = "float32",
) -> ModelBundle:
    """Build the AnimateDiff teacher family.

    Args:
        source: ``pretrained`` (hub ids or local diffusers folders, keys under ``pretrained``) or
            ``tiny`` (random weights, sizes under ``tiny``).
        pretrained: ``base_model`` (SD1.5-style pipeline folder), ``motion_adapter`` (or ``None`` when
            ``base_model/unet`` already holds a ``UNetMotionModel``), optional ``vae``, ``dtype``.
        tiny: keyword sizes for :func:`tiny_motion_unet` (``unet``), :func:`tiny_vae` (``vae``) and
            :func:`tiny_prompt_encoder` (``text``).
        image_teacher: ``shared`` (the video teacher with motion modules off: one copy of the
            weights) or a hub id / local folder of a separate SD1.5-style image model.
        video_schedule, image_schedule: overrides of the scheduler config per role (AnimateDiff's
            motion modules were trained with ``beta_schedule: linear``).
        num_frames, resolution: clip size in frames and pixels; sets the latent shape.
        teacher_dtype: ``float32``, ``bfloat16`` or ``float16``: the frozen roles during distillation
            (the trainable copies keep float32; :class:`~avdm.models.bundle.ModelBundle`).
    """
    if source not in ("pretrained", "tiny"):
        raise ValueError(f"model.source must be 'pretrained' or 'tiny', got {source!r}")
    check_parameters(build_animatediff, "model", num_frames=num_frames, resolution=resolution)
    if source == "tiny":
        if image_teacher != "shared":
            raise ValueError("model.image_teacher must be 'shared' for tiny models")
        motion, vae, prompt_encoder, scheduler_config, sources = _tiny_parts(tiny or {}, seed)
        dtype, local = torch.float32, False
    else:
        p = dict(pretrained or {})
        dtype, local = parse_dtype(p.get("dtype", "float32")), bool(p.get("local_files_only", False))
        motion, vae, prompt_encoder, scheduler_config, sources = _pretrained_parts(p, dtype, local)

    video = VideoUNetDenoiser(motion, _schedule(scheduler_config, video_schedule))
    image_unet = _image_unet(motion, image_teacher, dtype, local, sources)
    image = FrameUNetDenoiser(image_unet, _schedule(scheduler_config, image_schedule))
    # Reference sampling of the video teacher uses the video schedule (AnimateDiff: linear betas).
    scheduler_config = {**scheduler_config, **(video_schedule or {})}

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % scale:
        raise ValueError(f"model.resolution must be a multiple of the VAE factor {scale}, got {resolution}")
    latent_shape = (motion.config.in_channels, num_frames, resolution // scale, resolution // scale)
    return ModelBundle(
        FAMILY, video, image, prompt_encoder, vae, scheduler_config, sources, latent_shape, teacher_dtype
    )


Parts = tuple[UNetMotionModel, AutoencoderKL, PromptEncoder, dict[str, Any], dict[str, str]]


def _tiny_parts(sizes: dict[str, Any], seed: int) -> Parts:
    """Random-weight UNet + motion adapter, VAE and prompt encoder of ``model.tiny`` sizes; SD1.5's
    scheduler."""
    torch.manual_seed(seed)
    motion = tiny_motion_unet(**sizes.get("unet", {}))
    vae = tiny_vae(**sizes.get("vae", {}))
    prompt_encoder = tiny_prompt_encoder(**sizes.get("text", {}))
    scheduler_config = dict(DDIMScheduler(**SD15_SCHEDULER).config)
    return motion, vae, prompt_encoder, scheduler_config, {"teacher": f"tiny (random init, seed {seed})"}


def _pretrained_parts(p: dict[str, Any], dtype: torch.dtype, local: bool) -> Parts:
    """The parts of ``model.pretrained``: ``base_model`` (an SD1.5-style pipeline folder or hub id) with its
    ``unet`` + ``motion_adapter``, or its ``unet`` already a ``UNetMotionModel``; ``vae`` or the base's."""
    base = p.get("base_model")
    if not base:
        raise ValueError("model.pretrained.base_model must name a hub id or local folder")
    key = "model.pretrained.base_model"
    common = {"torch_dtype": dtype, "local_files_only": local}
    if p.get("motion_adapter"):
        unet2d = load_pretrained(
            "the base image UNet", key, UNet2DConditionModel.from_pretrained, base, subfolder="unet", **common
        )
        adapter = load_pretrained(
            "the AnimateDiff motion adapter", "model.pretrained.motion_adapter",
            MotionAdapter.from_pretrained, p["motion_adapter"], **common,
        )  # fmt: skip
        motion = UNetMotionModel.from_unet2d(unet2d, adapter)
        del unet2d, adapter
    else:
        motion = load_pretrained(
            "the AnimateDiff UNet", key, UNetMotionModel.from_pretrained, base, subfolder="unet", **common
        )
    vae_src = p.get("vae") or base
    vae = load_pretrained(
        "the VAE", "model.pretrained.vae", AutoencoderKL.from_pretrained, vae_src,
        subfolder=None if p.get("vae") else "vae", **common,
    )  # fmt: skip
    tokenizer = load_pretrained(
        "the tokenizer",
        key,
        CLIPTokenizer.from_pretrained,
        base,
        subfolder="tokenizer",
        local_files_only=local,
    )
    text_encoder = load_pretrained(
        "the text encoder", key, CLIPTextModel.from_pretrained, base, subfolder="text_encoder", **common
    )
    scheduler = load_pretrained(
        "the scheduler config", key, DDIMScheduler.from_pretrained, base, subfolder="scheduler",
        local_files_only=local,
    )  # fmt: skip
    sources = {"teacher": base, "motion_adapter": str(p.get("motion_adapter")), "vae": vae_src}
    return motion, vae, PromptEncoder(tokenizer, text_encoder), dict(scheduler.config), sources


def _image_unet(
    motion: UNetMotionModel, image_teacher: str, dtype: torch.dtype, local: bool, sources: dict[str, str]
) -> UNet2DConditionModel:
    """The 2D teacher's network: the video teacher's own spatial UNet (``shared``) or a separate SD1.5
    UNet."""
    if image_teacher == "shared":
        sources["image_teacher"] = "shared with the video teacher (motion modules off)"
        return spatial_unet(motion)
    sources["image_teacher"] = image_teacher
    return load_pretrained(
        "the 2D image teacher", "model.image_teacher", UNet2DConditionModel.from_pretrained, image_teacher,
        subfolder="unet", torch_dtype=dtype, local_files_only=local,
    )  # fmt: skip
