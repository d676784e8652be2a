"""The 2D frame SDM on latents of a VAE that compresses time (Wan's causal ``AutoencoderKLWan``, built here
tiny from config with a time factor of 2).

What the image teacher may see was decided by measuring the VAE: latent frame 0 of a clip is, to float
precision, the latent of frame 0 encoded alone as an image (the causal encoder sees the first frame by
itself), which is what a jointly image-and-video trained teacher learned on; a later latent frame is not
the latent of any of the frames it covers. So the frame SDM runs on latent frame 0, and asking for more
frames is refused in one line (docs/method_notes.md).
"""

from __future__ import annotations

import pytest
import torch

from avdm.errors import ConfigError
from avdm.losses import FrameSDMLoss, StepContext, TeacherBank
from avdm.models.families.wan import build_wan
from avdm.models.generator import FewStepGenerator
from avdm.models.vae import vae_factors

TINY = {"vae": {"base_dim": 8, "dim_mult": [1, 2], "num_res_blocks": 1, "temporal_downsample": [True]}}


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return build_wan(source="tiny", num_frames=5, resolution=16, image_teacher="shared", tiny=TINY)


@torch.no_grad()
def test_only_latent_frame_zero_is_an_image_latent(bundle) -> None:
    vae = bundle.vae.eval()
    assert vae_factors(vae)[0] == 2 and bundle.latent_shape[1] == 3  # 5 frames -> 1 + 4 / 2 latent frames
    torch.manual_seed(1)
    clip = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    latents = vae.encode(clip).latent_dist.mean
    alone = [vae.encode(clip[:, :, i : i + 1]).latent_dist.mean for i in range(5)]
    scale = latents.abs().mean()
    assert (latents[:, :, 0] - alone[0][:, :, 0]).abs().max() < 1e-5 * max(1.0, float(scale))
    for k, covered in ((1, (1, 2)), (2, (3, 4))):  # latent frame k: pixel frames 2k-1, 2k
        for i in covered:
            gap = (latents[:, :, k] - alone[i][:, :, 0]).abs().mean()
            assert gap > 0.05 * scale, (k, i, float(gap))


def test_the_frame_sdm_runs_on_latent_frame_zero_and_refuses_more(bundle) -> None:
    teachers = TeacherBank(bundle.video_teacher, bundle.image_teacher)
    assert bundle.image_teacher.temporal_compression == 2 and bundle.video_teacher.temporal_compression == 1
    with pytest.raises(
        ConfigError, match=r"num_frames=2: the VAE compresses time by 2, so only latent frame 0"
    ):
        FrameSDMLoss(num_frames=2).bind(teachers)
    for lora in (None, {"rank": 2}):
        plugin = FrameSDMLoss(num_frames=1, guidance_scale=3.0, fake_score_lora=lora)  # CFG: G gets a push
        plugin.bind(teachers)
        x0 = torch.randn(2, *bundle.latent_shape)
        assert torch.equal(plugin.select_frames(x0), x0[:, :, :1])
        generator = FewStepGenerator(bundle.video_teacher, [999, 499])
        text = bundle.prompt_encoder(["a red ball", "a blue box"])
        ctx = StepContext(x0_fake=x0.requires_grad_(), text=text, batch={}, teachers=teachers,
                          generator=generator, uncond_text=bundle.prompt_encoder(["", ""]))  # fmt: skip
        plugin.generator_loss(ctx).loss.backward()
        assert x0.grad[:, :, 0].abs().sum() > 0 and not x0.grad[:, :, 1:].any()


def test_a_per_frame_vae_keeps_random_frames() -> None:
    torch.manual_seed(0)
    flat = build_wan(source="tiny", num_frames=4, resolution=16, image_teacher="shared")
    plugin = FrameSDMLoss(num_frames=2)
    plugin.bind(TeacherBank(flat.video_teacher, flat.image_teacher))
    assert (
        not plugin.first_frame_only and plugin.select_frames(torch.randn(3, *flat.latent_shape)).shape[2] == 2
    )
