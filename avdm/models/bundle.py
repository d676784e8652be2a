"""What a model builder returns, and loading from pretrained weights with a one-sentence failure."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from avdm.errors import MissingWeightsError
from avdm.models.denoiser import Denoiser

T = TypeVar("T")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


class PromptEncoder(nn.Module):
    """Tokenizer + text encoder: ``list[str] -> (B, L, D)`` text embeddings (``last_hidden_state``)."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, max_length: int | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length or tokenizer.model_max_length

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]


@dataclass
class ModelBundle:
    """Everything a distillation run reads from one teacher family.

    Attributes:
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
            from avdm.errors import ConfigError

            raise ConfigError(
                f"model.teacher_dtype={self.teacher_dtype!r}: expected one of {', '.join(DTYPES)}"
            )


def load_pretrained(what: str, config_key: str, loader: Callable[..., T], source: str, **kwargs: Any) -> T:
    """``loader(source, **kwargs)`` (a diffusers / transformers ``from_pretrained``), or one clear error.

    Raises:
        MissingWeightsError: naming ``what`` is missing and the ``config_key`` to point at a local copy.
    """
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") > 1  # hub ids are "owner/name"
    if looks_local and not Path(source).expanduser().exists():
        raise MissingWeightsError(
            f"Missing {what}: the local path '{source}' does not exist; "
            f"set {config_key}=/path/to/a/local/copy."
        )
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as err:  # hub errors derive from OSError / ValueError
        hint = "" if os.environ.get("HF_HUB_OFFLINE") != "1" else " (HF_HUB_OFFLINE=1)"
        raise MissingWeightsError(
            f"Missing {what}: '{source}' is not a local directory and could not be loaded from the "
            f"Hugging Face hub or its cache{hint}; download it and set {config_key}=/path/to/a/local/copy."
        ) from err
