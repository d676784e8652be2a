"""The published architecture configs of the teachers avdm names, for building them without weights.

``python -m avdm.plan`` sizes a run whose weights are not on disk (``source: pretrained`` with a hub id) from
these: they are the published configs of the models (the ``config.json`` files of the hub repositories
``stable-diffusion-v1-5`` / ``SG161222/Realistic_Vision_V5.1_noVAE`` (SD1.5 UNet), ``guoyww/animatediff-
motion-adapter-v1-5-2``, ``stabilityai/sd-vae-ft-mse``, ``openai/clip-vit-large-patch14`` (SD1.5's text
encoder), ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` and ``Wan-AI/Wan2.1-T2V-14B-Diffusers`` (transformer, VAE:
time factor 4, space factor 8; UMT5-XXL text encoder). A local folder's own ``config.json`` wins over them.
"""

from __future__ import annotations

from typing import Any

# SD1.5's UNet + the AnimateDiff v1.5 motion adapter: diffusers' UNetMotionModel defaults are exactly these
# (block_out_channels 320/640/1280/1280, 2 layers per block, 8 heads, 8 motion heads, motion mid block).
ANIMATEDIFF_UNET: dict[str, Any] = {"cross_attention_dim": 768}
SD15_IMAGE_UNET: dict[str, Any] = {"cross_attention_dim": 768}  # UNet2DConditionModel defaults = SD1.5
SD_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
CLIP_VIT_L_TEXT: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "projection_dim": 768, "vocab_size": 49408, "hidden_act": "quick_gelu",
}  # fmt: skip

_WAN_COMMON: dict[str, Any] = {
    "patch_size": [1, 2, 2], "attention_head_dim": 128, "in_channels": 16, "out_channels": 16,
    "text_dim": 4096, "freq_dim": 256, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6, "rope_max_seq_len": 1024,
}  # fmt: skip
WAN_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "1.3B": {**_WAN_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},  # dim 1536
    "14B": {**_WAN_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40},  # dim 5120
}
# AutoencoderKLWan's defaults are Wan2.1's VAE (z_dim 16, base_dim 96; 4x in time, 8x in space).
WAN_VAE: dict[str, Any] = {}
UMT5_XXL: dict[str, Any] = {
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_layers": 24, "num_heads": 64, "vocab_size": 256384,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
}  # fmt: skip
WAN_TEXT_LENGTH = 512
CLIP_TEXT_LENGTH = 77


def wan_size(base_model: str) -> str:
    """``14B`` when the hub id or folder names it, else ``1.3B`` (the configs' default teacher)."""
    return "14B" if "14b" in str(base_model).lower() else "1.3B"
