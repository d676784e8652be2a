"""A teacher family's :class:`~avdm.models.bundle.ModelBundle` on the meta device: shapes and dtypes, no
weights, no memory, for sizing a run (``python -m avdm.plan``).

``source: tiny`` builds as usual under ``torch.device("meta")``. ``source: pretrained`` reads each network's
``config.json`` from a local folder when there is one, else the published config
(:mod:`avdm.models.published_configs`), and builds it with ``from_config`` on meta; the tokenizer is the
offline word tokenizer (planning never tokenizes), padded to the text encoder's length.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from avdm.models import published_configs as published
from avdm.models.bundle import ModelBundle
from avdm.models.pretrained import parse_dtype
from avdm.models.prompt_encoders import MaskedPromptEncoder, PromptEncoder
from avdm.models.tokenizer import build_word_tokenizer

META = torch.device("meta")


def local_config(folder: str | None, subfolder: str | None) -> dict[str, Any] | None:
    """``folder/subfolder/config.json`` as a dict, or ``None`` when it is not on disk."""
    if not folder:
        return None
    path = Path(str(folder)).expanduser() / (subfolder or "") / "config.json"
    if not path.is_file():
        return None
    import json

    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def _from_config(cls: Any, config: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    with META:
        return cls(**{k: v for k, v in config.items() if k in accepted}).to(dtype)


def _prompt_encoder(
    folder: str | None, clip_default: bool, dtype: torch.dtype, length: int | None
) -> PromptEncoder:
    from transformers import CLIPTextConfig, CLIPTextModel, UMT5Config, UMT5EncoderModel

    config = local_config(folder, "text_encoder")
    clip = config.get("model_type") == "clip_text_model" if config else clip_default
    if clip:
        values = config or published.CLIP_VIT_L_TEXT
        length = length or values.get("max_position_embeddings", published.CLIP_TEXT_LENGTH)
        with META:
            encoder = CLIPTextModel(CLIPTextConfig(**values)).to(dtype)
        return PromptEncoder(build_word_tokenizer(("a",), max_length=length), encoder, max_length=length)
    with META:
        encoder = UMT5EncoderModel(UMT5Config(**(config or published.UMT5_XXL))).to(dtype)
    length = length or published.WAN_TEXT_LENGTH
    return MaskedPromptEncoder(build_word_tokenizer(("a",), max_length=length), encoder, max_length=length)


def meta_bundle(model: Mapping[str, Any]) -> ModelBundle:
    """The bundle of a ``model`` config node (plain values) with every weight on the meta device."""
    if model.get("source", "tiny") == "tiny":
        with META:
            return instantiate(dict(model))
    family = str(model["_target_"]).rsplit(".", 2)[1]
    if family == "wan":
        return _wan(model)
    return _animatediff(model)


def _animatediff(model: Mapping[str, Any]) -> ModelBundle:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNetMotionModel

    from avdm.models.families import animatediff as family

    p = dict(model.get("pretrained") or {})
    base, dtype = p.get("base_model"), parse_dtype(p.get("dtype", "float32"))
    unet_config = None if p.get("motion_adapter") else local_config(base, "unet")
    motion = _from_config(UNetMotionModel, unet_config or published.ANIMATEDIFF_UNET, dtype)
    vae_config = local_config(p["vae"], None) if p.get("vae") else local_config(base, "vae")
    vae = _from_config(AutoencoderKL, vae_config or published.SD_VAE, dtype)
    prompt_encoder = _prompt_encoder(base, True, dtype, None)
    scheduler = dict(DDIMScheduler(**family.SD15_SCHEDULER).config)
    video_schedule, image_schedule = model.get("video_schedule"), model.get("image_schedule")
    video = family.VideoUNetDenoiser(motion, family._schedule(scheduler, video_schedule))
    image_teacher = model.get("image_teacher", "shared")
    if image_teacher == "shared":
        image_unet = family.spatial_unet(motion)
    else:
        config = local_config(image_teacher, "unet") or published.SD15_IMAGE_UNET
        image_unet = _from_config(UNet2DConditionModel, config, dtype)
    image = family.FrameUNetDenoiser(image_unet, family._schedule(scheduler, image_schedule))
    frames, resolution = int(model.get("num_frames", 16)), int(model.get("resolution", 512))
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (motion.config.in_channels, frames, resolution // scale, resolution // scale)
    sources = {"teacher": f"{base} (meta: config only)"}
    scheduler = {**scheduler, **(video_schedule or {})}
    return ModelBundle(family.FAMILY, video, image, prompt_encoder, vae, scheduler, sources, shape,
                       model.get("teacher_dtype", "float32"))  # fmt: skip


def _wan(model: Mapping[str, Any]) -> ModelBundle:
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanTransformer3DModel,
    )

    from avdm.models.families import wan as family
    from avdm.models.schedules import FlowMatchingSchedule

    p = dict(model.get("pretrained") or {})
    base, dtype = p.get("base_model"), parse_dtype(p.get("dtype", "float32"))
    config = local_config(base, "transformer") or published.WAN_TRANSFORMERS[published.wan_size(base)]
    transformer = _from_config(WanTransformer3DModel, config, dtype)
    vae_config = local_config(p["vae"], None) if p.get("vae") else local_config(base, "vae")
    if vae_config is not None and vae_config.get("block_out_channels"):  # an image VAE run per frame
        vae = _from_config(AutoencoderKL, vae_config, torch.float32)
    else:
        vae = _from_config(AutoencoderKLWan, vae_config or published.WAN_VAE, torch.float32)
    text_dtype = parse_dtype(p.get("text_encoder_dtype") or p.get("dtype", "float32"))
    text_folder = p.get("text_encoder") or base
    prompt_encoder = _prompt_encoder(text_folder, False, text_dtype, p.get("max_text_length"))
    shift = model.get("shift")
    schedule = FlowMatchingSchedule.from_scheduler_config({"shift": 3.0 if shift is None else float(shift)})
    scheduler = dict(FlowMatchEulerDiscreteScheduler(shift=schedule.shift).config)
    position = tuple(model.get("position") or ())
    video = family.VideoTransformerDenoiser(transformer, schedule, position)
    image = None
    if model.get("image_teacher", "none") == "shared":
        image = family.FrameTransformerDenoiser(transformer, schedule, position)
    resolution = model.get("resolution", (480, 832))
    shape = family.latent_shape(transformer.config.out_channels, int(model.get("num_frames", 81)), resolution,
                                vae, transformer.config.patch_size)  # fmt: skip
    sources = {"teacher": f"{base} (meta: config only)"}
    return ModelBundle(family.FAMILY, video, image, prompt_encoder, vae, scheduler, sources, shape,
                       model.get("teacher_dtype", "float32"))  # fmt: skip
