"""The denoiser view over real diffusers models: shapes, conventions, feature taps."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel, WanTransformer3DModel

from avdm.models.families.animatediff import FrameUNetDenoiser
from avdm.models.families.wan import VideoTransformerDenoiser
from avdm.models.feature_tap import FeatureTap
from avdm.models.schedules import DDPMSchedule, FlowMatchingSchedule


def test_video_unet_view_repeats_text_per_frame(tiny_bundle, tiny_text):
    video = tiny_bundle.video_teacher
    x = torch.randn(2, *tiny_bundle.latent_shape)
    t = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        out = video(x, t, tiny_text)
        direct = video.model(
            x, video.schedule.timestep(t), encoder_hidden_states=tiny_text.repeat_interleave(x.shape[2], 0)
        ).sample
    assert out.shape == x.shape
    torch.testing.assert_close(out, direct)


def test_video_view_conversions_follow_the_schedule(tiny_bundle, tiny_text):
    video = tiny_bundle.video_teacher
    x = torch.randn(2, *tiny_bundle.latent_shape)
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        eps = video(x, t, tiny_text)  # epsilon prediction
        a, s = video.schedule.alpha(t)[0], video.schedule.sigma(t)[0]
        torch.testing.assert_close(video.x0(x, t, tiny_text), (x - s * eps) / a)
        torch.testing.assert_close(video.eps(x, t, tiny_text), eps)


def test_per_frame_view_equals_image_model_on_each_frame():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    view = FrameUNetDenoiser(unet, DDPMSchedule())
    x, text, t = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 5, 16), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        out = view(x, t, text)
        for b in range(2):
            for f in range(3):
                ref = unet(
                    x[b : b + 1, :, f],
                    view.schedule.timestep(t[b : b + 1]),
                    encoder_hidden_states=text[b : b + 1],
                )
                torch.testing.assert_close(out[b : b + 1, :, f], ref.sample, rtol=1e-4, atol=1e-5)


def test_encoder_features_cover_scales_and_skip_the_decoder(tiny_bundle, tiny_text):
    video = tiny_bundle.video_teacher
    x = torch.randn(2, *tiny_bundle.latent_shape)
    calls = []
    handle = video.model.up_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            feats = video.encoder_features(x, torch.tensor([0.1, 0.4]), tiny_text)
    finally:
        handle.remove()
    assert calls == []  # the forward pass stopped after the mid block
    assert len(feats) == len(video.default_feature_layers) == 4
    sizes = {f.shape[-1] for f in feats}
    assert sizes == {8, 4}  # 16x16 latents: down blocks at 8, 4, 4 and the mid block at 4
    assert all(f.shape[0] == 2 and f.shape[2] == x.shape[2] for f in feats)
    assert [f.shape[1] for f in feats] == [32, 64, 64, 64]


def test_feature_tap_rejects_unknown_layers(tiny_bundle):
    with pytest.raises(ValueError, match="not modules"):
        FeatureTap(tiny_bundle.video_teacher.model, ["down_blocks.9"])


def test_flow_video_transformer_view():
    torch.manual_seed(0)
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=3,
        rope_max_seq_len=32,
    )
    view = VideoTransformerDenoiser(wan, FlowMatchingSchedule(shift=3.0))
    x, t, text = torch.randn(2, 4, 3, 8, 8), torch.tensor([0.3, 0.8]), torch.randn(2, 7, 32)
    with torch.no_grad():
        v = view(x, t, text)
        direct = wan(x, t * 1000, encoder_hidden_states=text).sample
        feats = view.encoder_features(x, t, text)
    torch.testing.assert_close(v, direct)
    # Flow matching: x0 = x_t - t v, eps = x_t + (1 - t) v.
    tt = t.reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(view.schedule.to_x0(v, x, t), x - tt * v)
    torch.testing.assert_close(view.schedule.to_eps(v, x, t), x + (1 - tt) * v)
    assert view.default_feature_layers == ("blocks.0", "blocks.1", "blocks.2")
    assert all(f.shape == (2, 16, 3, 4, 4) for f in feats)


def test_denoiser_rejects_non_video_input(tiny_bundle, tiny_text):
    with pytest.raises(ValueError, match="B, C, F, H, W"):
        tiny_bundle.video_teacher(torch.randn(2, 4, 16, 16), torch.tensor([0.5, 0.5]), tiny_text)
