"""Model building from config: offline tokenizer, tiny sizes, and one-sentence missing-weight errors."""

from __future__ import annotations

import pytest

from avdm.errors import MissingWeightsError
from avdm.models.families.animatediff import build_animatediff
from avdm.models.tokenizer import build_word_tokenizer


def test_word_tokenizer_gives_one_id_per_known_word_and_spells_unknown_ones():
    tok = build_word_tokenizer(["red", "ball", "moving", "left"], max_length=12)
    ids = tok("a red ball moving left", padding="max_length", max_length=12).input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[:6] == ["<|startoftext|>", "a</w>", "red</w>", "ball</w>", "moving</w>", "left</w>"]
    assert tokens[6:] == ["<|endoftext|>"] * 6
    spelled = tok.convert_ids_to_tokens(tok("zebra").input_ids)
    assert spelled == ["<|startoftext|>", "z", "e", "b", "r", "a</w>", "<|endoftext|>"]
    with pytest.raises(ValueError, match="tokenizer word"):
        build_word_tokenizer(["Ünïcode"])


def test_tiny_sizes_come_from_the_config():
    bundle = build_animatediff(
        source="tiny",
        num_frames=3,
        resolution=16,
        tiny={
            "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "cross_attention_dim": 24},
            "text": {"hidden_size": 24},
        },
    )
    assert bundle.latent_shape == (4, 3, 8, 8)
    assert tuple(bundle.video_teacher.model.config.block_out_channels) == (16, 32)
    assert bundle.prompt_encoder(["a red ball"]).shape == (1, 16, 24)
    assert bundle.video_teacher.schedule.beta_schedule == "scaled_linear"


@pytest.mark.parametrize(
    "pretrained, key",
    [
        (
            {"base_model": "/nonexistent/sd15", "motion_adapter": "/nonexistent/adapter"},
            "model.pretrained.base_model",
        ),
        ({"base_model": "someone/not-cached-model", "motion_adapter": None}, "model.pretrained.base_model"),
    ],
)
def test_missing_weights_raise_one_sentence_naming_the_key(pretrained, key):
    with pytest.raises(MissingWeightsError) as err:
        build_animatediff(source="pretrained", pretrained=pretrained)
    message = str(err.value)
    assert message.startswith("Missing the") and f"set {key}=/path/to/a/local/copy" in message
    assert "\n" not in message


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="model.source"):
        build_animatediff(source="huggingface")
    with pytest.raises(ValueError, match="model.resolution"):
        build_animatediff(source="tiny", resolution=33)


def test_reference_sampling_config_follows_the_video_schedule():
    bundle = build_animatediff(
        source="tiny",
        num_frames=2,
        resolution=16,
        tiny={"unet": {"block_out_channels": [16, 32], "norm_num_groups": 8}},
        video_schedule={"beta_schedule": "linear"},
    )
    assert bundle.scheduler_config["beta_schedule"] == "linear"
    assert bundle.video_teacher.schedule.beta_schedule == "linear"
    assert bundle.image_teacher.schedule.beta_schedule == "scaled_linear"


def test_vae_encoding_in_chunks_equals_one_pass(tiny_bundle):
    import torch

    from avdm.models.vae import encode_pixels

    pixels = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    one = encode_pixels(tiny_bundle.vae, pixels, sample=False, chunk=64)
    torch.testing.assert_close(encode_pixels(tiny_bundle.vae, pixels, sample=False, chunk=3), one)
    assert one.shape == (2, 4, 4, 16, 16)
