"""The paper teachers' published architectures, built on the meta device (no weights): their parameter
counts are the published models', and the names avdm's defaults reach for exist in them (the GAN's
feature layers, LoRA's target modules). These are the configs `python -m avdm.plan` sizes real runs with.

Published counts: SD1.5 UNet 859.52 M, AnimateDiff motion adapter v1.5-2 453.2 M (the UNetMotionModel is
the two: 1312.7 M), CLIP ViT-L/14 text encoder 123.06 M, SD VAE (sd-vae-ft-mse) 83.65 M; Wan2.1-T2V
1.3B's transformer 1419.0 M (its 5.68 GB float32 file), 14B's 14288.5 M (57.2 GB), UMT5-XXL's encoder
5680 M (11.4 GB in bf16).
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from avdm.config import CONFIG_DIR
from avdm.models.lora import DEFAULT_TARGETS
from avdm.models.meta_build import meta_bundle

MILLION = 1e6


def _bundle(model: str, **overrides):
    """The shipped model config (hub ids, not on disk: the published configs are used)."""
    node = OmegaConf.to_container(OmegaConf.load(f"{CONFIG_DIR}/model/{model}.yaml"), resolve=False)
    for key, value in overrides.items():
        node[key] = {**node[key], **value} if isinstance(value, dict) else value
    return meta_bundle(node)


def _count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / MILLION


@pytest.fixture(scope="module")
def animatediff():
    return _bundle("animatediff_sd15")


@pytest.mark.parametrize(
    ("part", "published"),
    [("unet", 859.52 + 453.2), ("text", 123.06), ("vae", 83.65), ("image_unet", 859.52)],
)
def test_animatediff_parts_have_the_published_parameter_counts(animatediff, part, published) -> None:
    module = {
        "unet": animatediff.video_teacher.model,
        "text": animatediff.prompt_encoder.text_encoder,
        "vae": animatediff.vae,
        "image_unet": animatediff.image_teacher.model,
    }[part]
    assert _count(module) == pytest.approx(published, rel=0.01)


@pytest.mark.parametrize(("base", "published"), [("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 1419.0),
                                                 ("Wan-AI/Wan2.1-T2V-14B-Diffusers", 14288.5)])  # fmt: skip
def test_wan_transformers_have_the_published_parameter_counts(base, published) -> None:
    bundle = _bundle("wan_pretrained", pretrained={"base_model": base, "text_encoder_dtype": "bfloat16"})
    assert _count(bundle.video_teacher.model) == pytest.approx(published, rel=0.01)
    assert _count(bundle.prompt_encoder.text_encoder) == pytest.approx(5680, rel=0.01)
    _names_exist(bundle.video_teacher)


def _names_exist(teacher) -> None:
    names = {name for name, _ in teacher.model.named_modules()}
    assert set(teacher.default_feature_layers) <= names, "the GAN's default feature layers"
    for target in DEFAULT_TARGETS:
        assert any(name.endswith(target) for name in names), f"LoRA target {target}"


def test_animatediff_names_the_defaults_use_exist(animatediff) -> None:
    _names_exist(animatediff.video_teacher)
    _names_exist(animatediff.image_teacher)
    assert any("motion_modules" in name for name, _ in animatediff.video_teacher.model.named_modules())
