"""Prompts -> text embeddings ``(B, L, D)``: CLIP (AnimateDiff / SD), UMT5 (Wan), or a tiny CLIP with the
project's offline word tokenizer; loaded from a diffusers folder by what its config names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, UMT5EncoderModel

from avdm.models.pretrained import load_pretrained, subfolder_config
from avdm.models.tokenizer import build_word_tokenizer

DEFAULT_TINY_WORDS = (
    "a an the red green blue yellow white black purple orange circle square triangle ball box "
    "moving left right up down towards away static bouncing spinning on in of and with background"
).split()


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


class MaskedPromptEncoder(PromptEncoder):
    """Wan's text conditioning: UMT5 ``last_hidden_state`` with padded positions set to zero.

    Returns ``(B, max_length, D)``; the pipeline of Wan passes the attention mask to the encoder and
    zeroes every position past each prompt's length, so the transformer sees the same tensors here.
    """

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.text_encoder(ids, attention_mask=mask)[0]
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


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


def load_prompt_encoder(
    source: str, key: str, dtype: torch.dtype, local: bool, max_length: int | None
) -> PromptEncoder:
    """Tokenizer + text encoder of a diffusers folder (``tokenizer/``, ``text_encoder/``): UMT5 (Wan, padded
    positions zeroed) or CLIP (``last_hidden_state``, padded to the tokenizer's ``model_max_length``)."""
    config = subfolder_config(source, "text_encoder")
    clip = (config or {}).get("model_type") == "clip_text_model"
    tokenizer_cls, encoder_cls = (CLIPTokenizer, CLIPTextModel) if clip else (AutoTokenizer, UMT5EncoderModel)
    tokenizer = load_pretrained(
        "the tokenizer",
        key,
        tokenizer_cls.from_pretrained,
        source,
        subfolder="tokenizer",
        local_files_only=local,
    )
    encoder = load_pretrained(
        f"the {'CLIP' if clip else 'UMT5'} text encoder",
        key,
        encoder_cls.from_pretrained,
        source,
        subfolder="text_encoder",
        torch_dtype=dtype,
        local_files_only=local,
    )
    if clip:
        return PromptEncoder(tokenizer, encoder, max_length=max_length)
    return MaskedPromptEncoder(tokenizer, encoder, max_length=max_length or 512)
