"""What a family builder returns: :class:`ModelBundle`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from avdm.errors import ConfigError
from avdm.models.denoiser import Denoiser
from avdm.models.families import Family
from avdm.models.pretrained import DTYPES
from avdm.models.prompt_encoders import PromptEncoder


@dataclass
class ModelBundle:
    """Everything a distillation run reads from one teacher family.

    Attributes:
        family: the teacher family (:class:`~avdm.models.families.Family`): its reference sampler, its export.
        video_teacher: the video denoiser (AnimateDiff UNet, video transformer).
        image_teacher: the frame-level (2D) denoiser; may share every weight with ``video_teacher``.
        prompt_encoder: prompts -> text embeddings ``(B, L, D)``.
        vae: latent <-> pixel codec (``None`` when training from cached latents only).
        scheduler_config: the teacher's diffusers scheduler config, for reference sampling.
        sources: where each set of weights came from (hub id, local path or ``tiny``), for checkpoints.
        teacher_dtype: dtype the *frozen* roles (teachers, text encoder, VAE) are kept in during
            distillation (``model.teacher_dtype``); trainable copies are made before the cast and keep
            float32 master weights.
    """

    family: Family
    video_teacher: Denoiser
    image_teacher: Denoiser | None
    prompt_encoder: PromptEncoder
    vae: nn.Module | None
    scheduler_config: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    latent_shape: tuple[int, int, int, int] = (4, 16, 64, 64)  # (C, F, H, W) of one clip's latent
    teacher_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.teacher_dtype not in DTYPES:
            raise ConfigError(
                f"model.teacher_dtype={self.teacher_dtype!r}: expected one of {', '.join(DTYPES)}"
            )
