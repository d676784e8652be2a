"""Video latents <-> pixels with the teacher's VAE.

Two kinds: image VAEs (SD's ``AutoencoderKL``) run per frame on scaled latents ``z * scaling_factor``;
video VAEs (Wan's ``AutoencoderKLWan``, with ``latents_mean`` / ``latents_std`` in their config) run on
the whole clip on normalized latents ``(z - mean) / std``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan
from einops import rearrange
from torch import Tensor, nn

from avdm.models.pretrained import load_pretrained, subfolder_config


def _video_stats(vae: nn.Module, like: Tensor) -> tuple[Tensor, Tensor] | None:
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, len(mean), 1, 1, 1)
    return (
        torch.tensor(mean, device=like.device).view(shape),
        torch.tensor(std, device=like.device).view(shape),
    )


def _scaling(vae: nn.Module) -> float:
    return float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)


@torch.no_grad()
def encode_pixels(vae: nn.Module, pixels: Tensor, sample: bool = True, chunk: int = 8) -> Tensor:
    """``(B, 3, F, H, W)`` pixels in [-1, 1] -> latents ``(B, C, F', H/s, W/s)`` in the teacher's scale;
    image VAEs encode ``chunk`` frames per call."""
    dtype = next(vae.parameters()).dtype
    if (stats := _video_stats(vae, pixels)) is not None:
        dist = vae.encode(pixels.to(dtype)).latent_dist
        latents = (dist.sample() if sample else dist.mode()).float()
        return (latents - stats[0]) / stats[1]
    b = pixels.shape[0]
    parts = []
    for frames in rearrange(pixels, "b c f h w -> (b f) c h w").to(dtype).split(chunk):
        dist = vae.encode(frames).latent_dist
        parts.append(dist.sample() if sample else dist.mode())
    latents = torch.cat(parts).float() * _scaling(vae)
    return rearrange(latents, "(b f) c h w -> b c f h w", b=b)


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: Tensor, chunk: int = 16) -> Tensor:
    """Latents ``(B, C, F, h, w)`` -> pixels ``(B, 3, F', H, W)`` in [-1, 1]; image VAEs decode ``chunk``
    frames per call."""
    dtype = next(vae.parameters()).dtype
    if (stats := _video_stats(vae, latents)) is not None:
        pixels = vae.decode((latents * stats[1] + stats[0]).to(dtype)).sample
        return pixels.float().clamp(-1, 1)
    b = latents.shape[0]
    frames = (rearrange(latents, "b c f h w -> (b f) c h w") / _scaling(vae)).to(dtype)
    pixels = torch.cat([vae.decode(part).sample for part in frames.split(chunk)])
    return rearrange(pixels.float().clamp(-1, 1), "(b f) c h w -> b c f h w", b=b)


def vae_factors(vae: nn.Module) -> tuple[int, int]:
    """``(temporal, spatial)`` compression of a VAE, read from its architecture: Wan's causal video VAE, or
    an image VAE (``AutoencoderKL``, time factor 1) run per frame."""
    cfg = vae.config
    if hasattr(cfg, "temperal_downsample"):
        return 2 ** sum(bool(d) for d in cfg.temperal_downsample), 2 ** (len(cfg.dim_mult) - 1)
    return 1, 2 ** (len(cfg.block_out_channels) - 1)


def load_vae(source: str, subfolder: str | None, key: str, dtype: torch.dtype, local: bool) -> nn.Module:
    """The VAE of a diffusers folder: ``AutoencoderKL`` (image VAE, per frame) or ``AutoencoderKLWan``,
    by the ``_class_name`` of its config (hub ids: Wan's)."""
    config = subfolder_config(source, subfolder or "")
    cls = AutoencoderKL if (config or {}).get("_class_name") == "AutoencoderKL" else AutoencoderKLWan
    return load_pretrained(
        f"the VAE ({cls.__name__})",
        key,
        cls.from_pretrained,
        source,
        subfolder=subfolder,
        torch_dtype=dtype,
        local_files_only=local,
    )
