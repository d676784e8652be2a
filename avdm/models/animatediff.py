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
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from avdm.models.bundle import ModelBundle, PromptEncoder, load_pretrained, parse_dtype
from avdm.models.denoiser import FrameUNetDenoiser, VideoUNetDenoiser
from avdm.models.schedules import DDPMSchedule
from avdm.models.tokenizer import build_word_tokenizer

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

DEFAULT_TINY_WORDS = (
    "a an the red green blue yellow white black purple orange circle square triangle ball box "
    "moving left right up down towards away static bouncing spinning on in of and with background"
).split()


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

    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
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


def tiny_prompt_encoder(
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_length: int = 16,
    words: Sequence[str] = DEFAULT_TINY_WORDS,
) -> PromptEncoder:
    """A small CLIP text encoder with the project's offline word tokenizer."""
    tokenizer = build_word_tokenizer(words, max_length=max_length)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return PromptEncoder(tokenizer, CLIPTextModel(config), max_length=max_length)


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
    if source == "tiny":
        torch.manual_seed(seed)
        sizes = tiny or {}
        motion = tiny_motion_unet(**sizes.get("unet", {}))
        vae = tiny_vae(**sizes.get("vae", {}))
        prompt_encoder = tiny_prompt_encoder(**sizes.get("text", {}))
        scheduler_config = dict(DDIMScheduler(**SD15_SCHEDULER).config)
        sources = {"teacher": f"tiny (random init, seed {seed})"}
        if image_teacher != "shared":
            raise ValueError("model.image_teacher must be 'shared' for tiny models")
    else:
        p = dict(pretrained or {})
        base = p.get("base_model")
        if not base:
            raise ValueError("model.pretrained.base_model must name a hub id or local folder")
        dtype = parse_dtype(p.get("dtype", "float32"))
        common = {"torch_dtype": dtype, "local_files_only": p.get("local_files_only", False)}
        if p.get("motion_adapter"):
            unet2d = load_pretrained(
                "the base image UNet",
                "model.pretrained.base_model",
                UNet2DConditionModel.from_pretrained,
                base,
                subfolder="unet",
                **common,
            )
            adapter = load_pretrained(
                "the AnimateDiff motion adapter",
                "model.pretrained.motion_adapter",
                MotionAdapter.from_pretrained,
                p["motion_adapter"],
                **common,
            )
            motion = UNetMotionModel.from_unet2d(unet2d, adapter)
            del unet2d, adapter
        else:
            motion = load_pretrained(
                "the AnimateDiff UNet",
                "model.pretrained.base_model",
                UNetMotionModel.from_pretrained,
                base,
                subfolder="unet",
                **common,
            )
        vae_src = p.get("vae") or base
        vae = load_pretrained(
            "the VAE",
            "model.pretrained.vae",
            AutoencoderKL.from_pretrained,
            vae_src,
            subfolder=None if p.get("vae") else "vae",
            **common,
        )
        tokenizer = load_pretrained(
            "the tokenizer",
            "model.pretrained.base_model",
            CLIPTokenizer.from_pretrained,
            base,
            subfolder="tokenizer",
            local_files_only=common["local_files_only"],
        )
        text_encoder = load_pretrained(
            "the text encoder",
            "model.pretrained.base_model",
            CLIPTextModel.from_pretrained,
            base,
            subfolder="text_encoder",
            **common,
        )
        prompt_encoder = PromptEncoder(tokenizer, text_encoder)
        scheduler_config = dict(
            load_pretrained(
                "the scheduler config",
                "model.pretrained.base_model",
                DDIMScheduler.from_pretrained,
                base,
                subfolder="scheduler",
                local_files_only=common["local_files_only"],
            ).config
        )
        sources = {"teacher": base, "motion_adapter": str(p.get("motion_adapter")), "vae": vae_src}

    video = VideoUNetDenoiser(motion, _schedule(scheduler_config, video_schedule))
    if image_teacher == "shared":
        image_unet = spatial_unet(motion)
        sources["image_teacher"] = "shared with the video teacher (motion modules off)"
    else:
        image_unet = load_pretrained(
            "the 2D image teacher",
            "model.image_teacher",
            UNet2DConditionModel.from_pretrained,
            image_teacher,
            subfolder="unet",
            **common,
        )
        sources["image_teacher"] = image_teacher
    image = FrameUNetDenoiser(image_unet, _schedule(scheduler_config, image_schedule))
    # Reference sampling of the video teacher uses the video schedule (AnimateDiff: linear betas).
    scheduler_config = {**scheduler_config, **(video_schedule or {})}

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % scale:
        raise ValueError(f"model.resolution must be a multiple of the VAE factor {scale}, got {resolution}")
    latent_shape = (motion.config.in_channels, num_frames, resolution // scale, resolution // scale)
    return ModelBundle(
        video, image, prompt_encoder, vae, scheduler_config, sources, latent_shape, teacher_dtype
    )
