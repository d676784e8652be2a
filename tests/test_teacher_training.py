"""Training a teacher with avdm: VAE stage, image stage (motion frozen), motion stage (image UNet frozen)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNetMotionModel
from hydra import compose, initialize_config_dir

from avdm.config import CONFIG_DIR
from avdm.errors import ConfigError
from avdm.losses import DenoisingLoss
from avdm.losses.base import StepContext
from avdm.models.families.animatediff import spatial_unet, tiny_motion_unet
from avdm.training.fit import fit
from avdm.training.optim import param_groups_by_pattern


def test_zero_initialized_motion_modules_make_the_video_unet_the_image_unet_per_frame():
    unet = tiny_motion_unet(block_out_channels=(32, 64), norm_num_groups=8, zero_init_motion_out=True).eval()
    x, text = torch.randn(2, 4, 3, 16, 16), torch.randn(6, 5, 32)
    with torch.no_grad():
        video = unet(x, torch.tensor([500, 500]), encoder_hidden_states=text).sample
        frames = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
        image = spatial_unet(unet)(frames, torch.tensor(500), encoder_hidden_states=text).sample
    torch.testing.assert_close(video.permute(0, 2, 1, 3, 4).flatten(0, 1), image, atol=1e-5, rtol=1e-5)
    # Without the zero init the motion modules mix frames.
    mixed = tiny_motion_unet(block_out_channels=(32, 64), norm_num_groups=8).eval()
    with torch.no_grad():
        out = mixed(x, torch.tensor([500, 500]), encoder_hidden_states=text).sample
        per_frame = spatial_unet(mixed)(frames, torch.tensor(500), encoder_hidden_states=text).sample
    assert not torch.allclose(out.permute(0, 2, 1, 3, 4).flatten(0, 1), per_frame, atol=1e-3)


def test_frozen_parameter_groups_leave_the_optimizer_and_stop_gradients():
    model = torch.nn.ModuleDict({"motion_modules": torch.nn.Linear(2, 2), "conv": torch.nn.Linear(2, 2)})
    groups = param_groups_by_pattern(
        model.named_parameters(),
        [{"pattern": "motion_modules", "frozen": True}, {"pattern": ".*", "lr": 0.1}],
        "module.generator_param_groups",
    )
    assert len(groups) == 1 and groups[0]["lr"] == 0.1 and "frozen" not in groups[0]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model["conv"].parameters()}
    assert not any(p.requires_grad for p in model["motion_modules"].parameters())
    with pytest.raises(ConfigError, match="every group is frozen"):
        param_groups_by_pattern(
            torch.nn.Linear(2, 2).named_parameters(), [{"pattern": ".*", "frozen": True}], "key"
        )


def _context(tiny_bundle, text, uncond):
    from avdm.models.generator import FewStepGenerator

    generator = FewStepGenerator(tiny_bundle.video_teacher, [999, 499])
    x0 = torch.randn(2, *tiny_bundle.latent_shape, generator=torch.Generator().manual_seed(0))
    return StepContext(None, text, {"latents": x0}, None, generator, uncond)


def test_denoising_loss_with_uncond_prob_one_trains_on_the_empty_prompt(tiny_bundle):
    text = tiny_bundle.prompt_encoder(["a red circle moving left"] * 2)
    uncond = tiny_bundle.prompt_encoder([""]).expand(2, -1, -1)

    def loss(plugin: DenoisingLoss, conditioning: torch.Tensor, skip_mask_draw: bool) -> torch.Tensor:
        torch.manual_seed(1)
        if skip_mask_draw:  # the plugin draws its (B,) keep/drop mask first; draw it here too
            torch.rand(2)
        with torch.no_grad():
            return plugin.generator_loss(_context(tiny_bundle, conditioning, uncond)).loss

    dropped = loss(DenoisingLoss(uncond_prob=1.0), text, skip_mask_draw=False)
    torch.testing.assert_close(dropped, loss(DenoisingLoss(), uncond, skip_mask_draw=True))
    assert not torch.allclose(dropped, loss(DenoisingLoss(), text, skip_mask_draw=True))
    with pytest.raises(ValueError, match="uncond_prob"):
        DenoisingLoss(uncond_prob=1.5)


def _stage(experiment: str, tmp: Path, name: str, *overrides: str) -> Path:
    out = tmp / name
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"+experiment={experiment}",
                f"paths.output_dir={tmp / ('run_' + name)}",
                f"data.root={tmp / 'data'}",
                "data.num_videos=6",
                "data.batch_size=2",
                "data.num_workers=0",
                "trainer.max_steps=2",
                "trainer.enable_progress_bar=false",
                "~logger",
                f"callbacks.export.out_dir={out}",
                "module.warmup_steps=0",
                *overrides,
            ],
        )
    fit(cfg)
    return out


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    return UNetMotionModel.from_pretrained(folder, subfolder="unet").state_dict()


def _split(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    motion = {k: v for k, v in state.items() if "motion_modules" in k}
    return motion, {k: v for k, v in state.items() if k not in motion}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_teacher_stages_train_the_vae_then_the_image_unet_then_the_motion_modules(tmp_path):
    vae_dir = _stage("teacher_shapes_vae", tmp_path, "vae", "module.warmup_steps=0")
    vae = AutoencoderKL.from_pretrained(vae_dir, subfolder="vae")
    assert vae.config.scaling_factor != 1.0 and 0.0 < vae.config.scaling_factor < 100.0
    assert (tmp_path / "data" / "shapes.csv").is_file(), "the data module writes the dataset on first use"

    image_dir = _stage("teacher_shapes_image", tmp_path, "image", f"model.pretrained.base_model={vae_dir}")
    motion_dir = _stage("teacher_shapes", tmp_path, "motion", f"model.pretrained.base_model={image_dir}")

    (m0, s0), (m1, s1), (m2, s2) = (_split(_unet(d)) for d in (vae_dir, image_dir, motion_dir))
    assert not _changed(m0, m1), "the image stage must not move the motion modules"
    assert len(_changed(s0, s1)) > len(s0) // 2, "the image stage trains the image UNet"
    assert _changed(s1, s2) and all("attn2" in k for k in _changed(s1, s2)), (
        "the motion stage moves only the image UNet's cross-attention"
    )
    assert _changed(m1, m2), "the motion stage trains the motion modules"
    zero_out = [k for k in m0 if k.endswith("proj_out.weight")]
    assert zero_out and all(not m0[k].any() for k in zero_out), "motion modules start at the identity"
    vae_after = AutoencoderKL.from_pretrained(motion_dir, subfolder="vae").state_dict()
    assert not _changed(vae.state_dict(), vae_after), "later stages keep the stage-1 VAE"
