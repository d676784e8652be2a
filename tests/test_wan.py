"""The Wan-style flow-matching teacher family: tiny builds offline, shapes, shift, missing weights."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import UMT5Config, UMT5EncoderModel

from avdm.config import CONFIG_DIR
from avdm.errors import MissingWeightsError
from avdm.models.families.wan import VideoTransformerDenoiser, build_wan, latent_shape, tiny_wan_vae
from avdm.models.prompt_encoders import MaskedPromptEncoder
from avdm.models.sampling import make_scheduler
from avdm.models.schedules import FlowMatchingSchedule
from avdm.models.tokenizer import build_word_tokenizer
from avdm.models.vae import vae_factors


@pytest.fixture(scope="module")
def wan():
    return build_wan(source="tiny", num_frames=2, resolution=16, shift=3.0)


def test_tiny_bundle_builds_offline_with_consistent_parts(wan):
    assert isinstance(wan.video_teacher, VideoTransformerDenoiser) and wan.image_teacher is None
    assert isinstance(wan.video_teacher.schedule, FlowMatchingSchedule)
    assert wan.video_teacher.schedule.prediction_type == "flow"
    assert wan.latent_shape == (4, 2, 8, 8)
    # The sampler warps its time grid with the schedule's shift, and the normalized time the model is fed
    # (timestep / T) is the sampler's noise level sigma.
    schedule = wan.video_teacher.schedule
    assert wan.scheduler_config["shift"] == schedule.shift == 3.0
    scheduler = make_scheduler("flow_euler", wan.scheduler_config)
    scheduler.set_timesteps(4)
    grid = torch.linspace(1.0, scheduler.sigma_min, 4)
    torch.testing.assert_close(scheduler.sigmas[:-1], schedule.shift_t(grid))
    torch.testing.assert_close(schedule.t_from_timestep(scheduler.timesteps), scheduler.sigmas[:-1])


def test_tiny_forward_text_and_vae_shapes(wan):
    text = wan.prompt_encoder(["a red ball moving left", "a blue box"])
    assert text.shape == (2, 16, wan.video_teacher.model.config.text_dim)
    x = torch.randn(2, *wan.latent_shape)
    with torch.no_grad():
        v = wan.video_teacher(x, torch.tensor([0.2, 0.9]), text)
        pixels = wan.vae.decode(x).sample
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert pixels.shape == (2, 3, 2, 16, 16)
    assert vae_factors(wan.vae) == (1, 2)


def test_tiny_text_width_must_match_the_transformer():
    with pytest.raises(ValueError, match="text_dim=16"):
        build_wan(source="tiny", num_frames=2, resolution=16, tiny={"transformer": {"text_dim": 16}})


def test_latent_shape_follows_wan_vae_arithmetic():
    wan_like = tiny_wan_vae(
        base_dim=4, latent_channels=16, dim_mult=[1, 2, 4, 4], temporal_downsample=[0, 1, 1]
    )
    assert vae_factors(wan_like) == (4, 8)
    assert latent_shape(16, 81, (480, 832), wan_like, (1, 2, 2)) == (16, 21, 60, 104)
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4 k"):
        latent_shape(16, 80, 480, wan_like, (1, 2, 2))
    with pytest.raises(ValueError, match="multiple of 16"):
        latent_shape(16, 81, 488, wan_like, (1, 2, 2))


def test_shift_is_read_from_flow_scheduler_configs():
    read = FlowMatchingSchedule.from_scheduler_config
    assert read({"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0}).shift == 3.0
    assert read({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0}).shift == 7.0
    assert read({}).shift == 1.0
    with pytest.raises(ValueError, match="dynamic"):
        read({"shift": 1.0, "use_dynamic_shifting": True})
    assert read({"use_dynamic_shifting": True}, shift=5.0).shift == 5.0, "model.shift overrides it"


def test_masked_prompt_encoder_zeroes_padding_like_wan():
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(["a", "red", "ball"], max_length=8)
    config = UMT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    encoder = MaskedPromptEncoder(tokenizer, UMT5EncoderModel(config).eval(), max_length=8)
    text = encoder(["a red ball", "ball"])
    lengths = [5, 3]  # start, words, end
    assert text.shape == (2, 8, 16)
    for row, n in zip(text, lengths):
        assert row[n:].abs().sum() == 0 and (row[:n].abs().sum(-1) > 0).all()


def test_missing_local_weights_name_the_config_key():
    with pytest.raises(MissingWeightsError, match="model\\.pretrained\\.base_model=") as err:
        build_wan(source="pretrained", pretrained={"base_model": "/nonexistent/Wan2.1-T2V-1.3B-Diffusers"})
    message = str(err.value)
    assert "Wan transformer" in message and "/nonexistent/Wan2.1-T2V-1.3B-Diffusers" in message
    assert "\n" not in message


def test_uncached_hub_weights_offline_name_the_config_key():
    with pytest.raises(MissingWeightsError, match="HF_HUB_OFFLINE=1.*model\\.pretrained\\.base_model="):
        build_wan(source="pretrained", pretrained={"base_model": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"})


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="'pretrained' or 'tiny'"):
        build_wan(source="hub")


def test_model_configs_compose_and_the_tiny_one_builds():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        tiny = compose("train", overrides=["model=wan_tiny", "paths.output_dir=/tmp/x"]).model
        real = compose("train", overrides=["model=wan_pretrained", "paths.output_dir=/tmp/x"]).model
    bundle = instantiate(tiny)
    assert bundle.latent_shape == (4, 4, 8, 8) and bundle.image_teacher is None
    assert real.pretrained.base_model == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert real.shift is None and real.num_frames == 81 and list(real.resolution) == [480, 832]
