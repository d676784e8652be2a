"""Training the teacher family's image VAE (``AutoencoderKL``) on the frames of pixel clips.

The first stage of training a small AnimateDiff-style teacher from scratch (the shapes teacher): the
VAE learns to reconstruct frames, with a small KL term that keeps its latent space smooth (SD's VAE
recipe without the perceptual and adversarial terms, which the flat-coloured shapes do not need).
At the end it sets ``scaling_factor`` so that scaled latents have unit variance, as SD does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from einops import rearrange
from torch import Tensor

from avdm.config_schema import check_parameters
from avdm.errors import ConfigError
from avdm.models.bundle import ModelBundle
from avdm.models.denoiser import freeze_
from avdm.training.optim import adamw, linear_warmup


class AutoencoderModule(L.LightningModule):
    """Trains ``models.vae``; the rest of the bundle is kept, frozen, for the exported pipeline.

    Loss per frame ``x`` (``(N, 3, H, W)`` in [-1, 1]): ``|x - D(z)|_1 + |x - D(z)|_2^2 + kl_weight *
    KL(q(z | x) || N(0, I))`` with ``z ~ q(z | x)``, means over pixels and latents.

    Args:
        models: the teacher family; only its ``vae`` trains.
        lr: AdamW learning rate.
        kl_weight: weight of the KL term (SD: 1e-6).
        frames_per_clip: frames drawn from each clip of a batch (frames of one clip are alike).
        warmup_steps: linear LR warm-up, in steps.
        scale_momentum: momentum of the running second moment of the latents that sets ``scaling_factor``.
    """

    def __init__(
        self,
        models: ModelBundle,
        lr: float = 1e-3,
        kl_weight: float = 1e-6,
        frames_per_clip: int = 2,
        warmup_steps: int = 100,
        scale_momentum: float = 0.99,
    ) -> None:
        super().__init__()
        if models.vae is None:
            raise ConfigError("model: the bundle has no VAE to train")
        check_parameters(
            self,
            "module",
            lr=lr,
            kl_weight=kl_weight,
            frames_per_clip=frames_per_clip,
            warmup_steps=warmup_steps,
        )
        self.vae = models.vae
        self.vae.requires_grad_(True)
        self.scheduler_config = dict(models.scheduler_config)
        self.sources = dict(models.sources)
        self.family = models.family
        self.unet = models.video_teacher.model
        self.prompt_encoder = models.prompt_encoder
        freeze_(self.unet)
        freeze_(self.prompt_encoder)
        self.lr, self.kl_weight, self.frames_per_clip = lr, kl_weight, frames_per_clip
        self.warmup_steps, self.scale_momentum = warmup_steps, scale_momentum
        self.register_buffer("latent_second_moment", torch.ones(()))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = adamw(self.vae.parameters(), lr=self.lr)
        scheduler = linear_warmup(optimizer, self.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def frames(self, pixels: Tensor) -> Tensor:
        """``frames_per_clip`` random frames of each clip ``(B, 3, F, H, W)`` -> ``(B * k, 3, H, W)``."""
        b, _, f = pixels.shape[:3]
        k = min(self.frames_per_clip, f)
        index = torch.rand(b, f, device=pixels.device).argsort(dim=1)[:, :k]
        picked = torch.gather(pixels, 2, index[:, None, :, None, None].expand(-1, 3, -1, *pixels.shape[3:]))
        return rearrange(picked, "b c k h w -> (b k) c h w")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        x = self.frames(batch["pixels"])
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample()
        recon = self.vae.decode(z).sample
        l1 = (recon - x).abs().mean()
        l2 = (recon - x).pow(2).mean()
        kl = posterior.kl().mean() / z[0].numel()
        loss = l1 + l2 + self.kl_weight * kl
        if not torch.isfinite(loss):
            raise ConfigError(
                f"autoencoder: the loss became {float(loss)} at step {self.global_step}; "
                "lower autoencoder.lr (the last checkpoint was kept)"
            )
        with torch.no_grad():
            m = self.scale_momentum
            self.latent_second_moment.mul_(m).add_((1 - m) * z.pow(2).mean())
        self.log_dict(
            {"vae/loss": loss.detach(), "vae/l1": l1.detach(), "vae/kl": kl.detach()}, prog_bar=True
        )
        return loss

    @property
    def scaling_factor(self) -> float:
        """``1 / RMS`` of the unscaled latents seen lately: scaled latents have unit second moment."""
        return float(self.latent_second_moment.rsqrt())

    def pipeline_parts(self) -> dict[str, Any]:
        """What :func:`~avdm.export.export_teacher` writes: the trained VAE, with its
        ``scaling_factor`` set, beside the bundle's (untrained) UNet and prompt encoder."""
        self.vae.register_to_config(scaling_factor=self.scaling_factor)
        return {
            "family": self.family,
            "model": self.unet,
            "vae": self.vae,
            "prompt_encoder": self.prompt_encoder,
            "scheduler_config": self.scheduler_config,
            "info": {"stage": "autoencoder", "steps": int(self.global_step), "sources": self.sources},
        }
