"""Video latents <-> pixels with an image VAE applied per frame (SD-style, scaled latents)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


def _scaling(vae: nn.Module) -> float:
    return float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)


@torch.no_grad()
def encode_pixels(vae: nn.Module, pixels: Tensor, sample: bool = True) -> Tensor:
    """``(B, 3, F, H, W)`` pixels in [-1, 1] -> scaled latents ``(B, C, F, H/s, W/s)``."""
    b = pixels.shape[0]
    frames = rearrange(pixels, "b c f h w -> (b f) c h w").to(next(vae.parameters()).dtype)
    dist = vae.encode(frames).latent_dist
    latents = dist.sample() if sample else dist.mode()
    return rearrange(latents.float() * _scaling(vae), "(b f) c h w -> b c f h w", b=b)


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: Tensor, chunk: int = 16) -> Tensor:
    """Latents ``(B, C, F, h, w)`` -> pixels ``(B, 3, F, H, W)`` in [-1, 1]; ``chunk`` frames per call."""
    b = latents.shape[0]
    frames = rearrange(latents, "b c f h w -> (b f) c h w") / _scaling(vae)
    frames = frames.to(next(vae.parameters()).dtype)
    pixels = torch.cat([vae.decode(part).sample for part in frames.split(chunk)])
    return rearrange(pixels.float().clamp(-1, 1), "(b f) c h w -> b c f h w", b=b)
