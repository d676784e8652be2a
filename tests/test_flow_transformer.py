"""The flow-transformer teacher's parts: coordinate channels, its one-frame (2D) view, shared encoders,
the flow teacher folder, joint image-video denoising, logit-normal times and the word-swap probe."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from avdm.config import asset_path
from avdm.data.shapes import caption
from avdm.export import export_teacher
from avdm.losses.base import StepContext, TeacherBank
from avdm.losses.denoising import DenoisingLoss
from avdm.metrics.word_swap import VARIANTS, swapped, word_swap_losses
from avdm.models.denoiser import count_parameter_storage
from avdm.models.families.wan import (
    FrameTransformerDenoiser,
    VideoTransformerDenoiser,
    build_wan,
    position_channels,
    tiny_wan_transformer,
)
from avdm.models.schedules import FlowMatchingSchedule

SIZES = {"num_attention_heads": 2, "attention_head_dim": 8, "ffn_dim": 32, "num_layers": 2, "text_dim": 32}


@pytest.fixture(scope="module")
def flow():
    """A tiny Wan teacher with coordinate channels and a shared one-frame view: latents (4, 4, 8, 8)."""
    return build_wan(
        source="tiny",
        num_frames=4,
        resolution=16,
        shift=3.0,
        position=["frame", "y", "x"],
        image_teacher="shared",
        tiny={"transformer": SIZES},
    )


def test_position_channels_are_ramps_along_their_axis():
    x = torch.zeros(2, 4, 5, 3, 2)
    pos = position_channels(x, ["frame", "y", "x"])
    assert pos.shape == (2, 3, 5, 3, 2)
    torch.testing.assert_close(pos[0, 0, :, 0, 0], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(pos[1, 1, 2, :, 1], torch.linspace(-1, 1, 3))
    torch.testing.assert_close(pos[0, 2, 4, 2, :], torch.tensor([-1.0, 1.0]))
    assert (pos[:, 0] == pos[:, 0, :, :1, :1]).all(), "the frame ramp is constant over the frame"
    assert (position_channels(torch.zeros(1, 4, 1, 3, 3), ["frame"]) == 0).all(), "one frame: no time"


def test_transformer_input_channels_must_match_the_coordinates():
    model = tiny_wan_transformer(**SIZES, position_channels=1)
    schedule = FlowMatchingSchedule(3.0)
    with pytest.raises(ValueError, match="must name 1 coordinate channel"):
        VideoTransformerDenoiser(model, schedule, [])
    with pytest.raises(ValueError, match="distinct names from"):
        VideoTransformerDenoiser(model, schedule, ["time"])
    assert VideoTransformerDenoiser(model, schedule, ["frame"]).position == ("frame",)


def test_coordinates_change_the_prediction_and_frames_are_told_apart(flow):
    text = flow.prompt_encoder(["a red ball moving left"])
    x = torch.zeros(1, *flow.latent_shape)  # no signal: only the coordinates differ between tokens
    with torch.no_grad():
        out = flow.video_teacher(x, torch.tensor([0.9]), text)
    first, last = out[0, :, 0], out[0, :, -1]
    assert (first - last).abs().max() > 1e-4, "a relative-only model gives every frame the same output"


def test_frame_view_is_the_video_transformer_on_one_frame_clips(flow):
    image = flow.image_teacher
    assert isinstance(image, FrameTransformerDenoiser) and image.model is flow.video_teacher.model
    assert count_parameter_storage(flow.video_teacher, image) == len(list(image.parameters()))
    text = flow.prompt_encoder(["a red ball", "a blue box"])
    x, t = torch.randn(2, *flow.latent_shape), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        frames = image(x, t, text)
        for f in range(x.shape[2]):
            alone = flow.video_teacher(x[:, :, f : f + 1], t, text)
            torch.testing.assert_close(frames[:, :, f : f + 1], alone, rtol=1e-5, atol=1e-6)
        feats = image.encoder_features(x, t, text, ["blocks.1"])
    assert feats[0].shape == (2, 16, 4, 4, 4)  # (B, heads x head dim, F, H / 2, W / 2)


def test_shared_encoders_give_the_shapes_latents_and_text():
    bundle = build_wan(
        source="tiny",
        num_frames=8,
        resolution=32,
        encoders=asset_path("shapes_teacher"),
        position=["frame"],
        tiny={"transformer": {**SIZES, "text_dim": 64}},
    )
    assert type(bundle.vae).__name__ == "AutoencoderKL" and bundle.latent_shape == (4, 8, 8, 8)
    assert bundle.prompt_encoder(["a red circle moving left"]).shape == (1, 8, 64)
    assert bundle.sources["vae"].endswith("shapes_teacher")


def test_flow_teacher_folder_round_trips(flow, tmp_path):
    export_teacher(
        tmp_path / "teacher",
        flow.family,
        flow.video_teacher.model,
        flow.vae,
        flow.prompt_encoder,
        flow.scheduler_config,
        {"stage": "test"},
    )
    assert not (tmp_path / "teacher" / "model_index.json").exists()
    loaded = build_wan(
        source="pretrained",
        pretrained={"base_model": str(tmp_path / "teacher"), "local_files_only": True},
        num_frames=4,
        resolution=16,
        position=["frame", "y", "x"],
    )
    assert loaded.video_teacher.schedule.shift == 3.0
    prompts = ["a red ball moving left"]
    torch.testing.assert_close(loaded.prompt_encoder(prompts), flow.prompt_encoder(prompts))
    x, t, text = torch.randn(1, *flow.latent_shape), torch.tensor([0.7]), flow.prompt_encoder(prompts)
    with torch.no_grad():
        torch.testing.assert_close(loaded.video_teacher(x, t, text), flow.video_teacher(x, t, text))
    with pytest.raises(ValueError, match="must name 3 coordinate channel"):
        build_wan(
            source="pretrained",
            pretrained={"base_model": str(tmp_path / "teacher"), "local_files_only": True},
            num_frames=4,
            resolution=16,
        )


class _Recorder(torch.nn.Module):
    """Stands in for a denoiser: records its inputs, predicts zeros."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule, self.seen = schedule, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, text):
        self.seen.append((x_t.shape, t.clone()))
        return x_t * self.w


def test_single_frame_denoising_trains_on_one_frame_clips():
    schedule = FlowMatchingSchedule(3.0)
    recorder = _Recorder(schedule)
    generator = SimpleNamespace(denoiser=recorder)
    latents = torch.randn(6, 4, 5, 2, 2)
    ctx = StepContext(None, torch.zeros(6, 3, 8), {"latents": latents}, TeacherBank(recorder), generator)
    DenoisingLoss(single_frame=True).generator_loss(ctx)
    DenoisingLoss().generator_loss(ctx)
    assert recorder.seen[0][0] == (6, 4, 1, 2, 2) and recorder.seen[1][0] == (6, 4, 5, 2, 2)


def test_logit_normal_times_follow_their_density():
    schedule = FlowMatchingSchedule(1.0)
    g = torch.Generator().manual_seed(0)
    t = schedule.sample_t(20_000, generator=g, density="logit_normal")
    logit = torch.logit(t)
    assert abs(float(logit.mean())) < 0.03 and abs(float(logit.std()) - 1.0) < 0.03
    narrow = schedule.sample_t(20_000, 0.5, 0.7, generator=g, density="logit_normal", logit_std=0.5)
    assert 0.5 <= float(narrow.min()) and float(narrow.max()) <= 0.7
    shifted = FlowMatchingSchedule(3.0).sample_t(20_000, generator=g, density="logit_normal")
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.01), "median u = 0.5 shifts to 3/4"
    with pytest.raises(ValueError, match="density must be one of"):
        schedule.sample_t(2, density="beta")
    with pytest.raises(ValueError, match="t_density must be one of"):
        DenoisingLoss(t_density="beta")


def test_swapped_captions_change_one_word():
    text = caption("red", "circle", "left")
    assert swapped(text, "sign") == "a red circle moving right"
    assert swapped(text, "axis") == "a red circle moving up"
    assert swapped(caption("purple", "square", "down"), "colour") == "a red square moving down"
    assert swapped(text, "empty") == "" and swapped(text, "true") == text


def test_word_swap_probe_sees_only_the_words_a_model_reads(flow):
    """Every swap moves the loss of a model that reads its text; none moves a model that ignores it."""
    latents = torch.randn(6, *flow.latent_shape)
    captions = [caption("red", "circle", d) for d in ("left", "right", "up", "down", "left", "up")]
    losses = word_swap_losses(flow.video_teacher, flow.prompt_encoder, latents, captions, (0.5, 0.9))
    assert set(losses) == {0.5, 0.9} and all(set(row) == set(VARIANTS) for row in losses.values())
    row = losses[0.9]
    assert row["sign"] != row["true"] and row["empty"] != row["true"], "a random model reads its text"
    again = word_swap_losses(flow.video_teacher, flow.prompt_encoder, latents, captions, (0.9,))
    assert again[0.9] == row, "same clips, same noise: the same numbers"

    class TextBlind(torch.nn.Module):
        schedule = flow.video_teacher.schedule

        def forward(self, x_t, t, text):
            return x_t * 0.5

    blind = word_swap_losses(TextBlind(), flow.prompt_encoder, latents, captions, (0.9,))[0.9]
    assert len({round(v, 9) for v in blind.values()}) == 1
