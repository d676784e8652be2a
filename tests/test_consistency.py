"""Consistency distillation: the LCM target (one guided teacher step, then the EMA target network), the
boundary at t = 0, the EMA update after each generator step, and a short fit of the tiny experiment."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from avdm.config import CONFIG_DIR
from avdm.losses import ConsistencyDistillationLoss, StepContext, TeacherBank
from avdm.losses.functional import regression_distance
from avdm.models.denoiser import freeze_, trainable_copy
from avdm.models.families.animatediff import build_animatediff
from avdm.models.generator import FewStepGenerator
from avdm.models.sampler_steps import deterministic_step, guided_prediction
from avdm.training.fit import fit

B = 3


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    bundle = build_animatediff(source="tiny", num_frames=2, resolution=16)
    teachers = TeacherBank(freeze_(bundle.video_teacher), freeze_(bundle.image_teacher))
    generator = FewStepGenerator(trainable_copy(bundle.video_teacher), timesteps=[999, 499])
    with torch.no_grad():  # a student that differs from the teacher (and so from the initial target)
        for p in generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    text = bundle.prompt_encoder(["a red ball moving left", "a blue box", "a green ball"])
    uncond = bundle.prompt_encoder([""] * B)
    latents = torch.randn(B, *bundle.latent_shape)
    return teachers, generator, text, uncond, latents


def _ctx(parts) -> StepContext:
    teachers, generator, text, uncond, latents = parts
    return StepContext(None, text, {"latents": latents}, teachers, generator, uncond)


@pytest.mark.parametrize("num_solver_steps", [1, 4])
def test_loss_is_the_distance_to_the_ema_target_one_guided_teacher_step_later(parts, num_solver_steps):
    teachers, generator, text, uncond, latents = parts
    plugin = ConsistencyDistillationLoss(
        num_solver_steps=num_solver_steps, guidance_scale=3.0, distance="mse"
    )
    plugin.bind(teachers)
    torch.manual_seed(7)
    loss = plugin.generator_loss(_ctx(parts)).loss

    torch.manual_seed(7)  # the same draws, by hand: n, then the forward noise
    n = torch.randint(1, num_solver_steps + 1, (B,))
    schedule = teachers.video.schedule
    t_n, t_prev = n / num_solver_steps, (n - 1) / num_solver_steps
    x_n = schedule.add_noise(latents, torch.randn_like(latents), t_n)
    with torch.no_grad():
        pred = guided_prediction(teachers.video, x_n, t_n, text, uncond, 3.0)
        x_prev = deterministic_step(schedule, pred, x_n, t_n, t_prev)
        expected_target = plugin.target.x0(x_prev, t_prev, text)
        boundary = schedule.to_x0(pred, x_n, t_n)  # t_{n-1} = 0: the teacher's own x0 estimate
        expected_target = torch.where((n == 1).view(-1, 1, 1, 1, 1), boundary, expected_target)
        expected = regression_distance(generator.denoiser.x0(x_n, t_n, text), expected_target, "mse")
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert loss > 0
    if num_solver_steps == 1:  # every point is at the boundary: plain distillation of the guided x0
        torch.testing.assert_close(expected_target, boundary)


def test_after_generator_step_moves_the_target_by_the_ema_rule_and_it_never_trains(parts):
    teachers, generator, *_ = parts
    plugin = ConsistencyDistillationLoss(ema_decay=0.9)
    plugin.bind(teachers)
    plugin.train()
    before = [p.detach().clone() for p in plugin.target.parameters()]
    plugin.after_generator_step(_ctx(parts))
    online = list(generator.denoiser.parameters())
    for old, new, g in zip(before, plugin.target.parameters(), online, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * g.detach())
    assert not plugin.target.training and not plugin.has_critic
    assert all(not p.requires_grad for p in plugin.target.parameters())


def test_tiny_experiment_fits_and_its_target_follows_the_generator(tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=lcm_tiny",
                "trainer.max_steps=2",
                "trainer.enable_progress_bar=false",
                "callbacks.samples.every_n_steps=0",
                "callbacks.checkpoint.every_n_train_steps=0",
                "data.num_samples=4",
                f"paths.output_dir={tmp_path}",
                "logger=[]",
            ],
        )
    metrics = fit(cfg)
    assert metrics["generator_steps"] == 2 and metrics["critic_steps"] == 0
    assert metrics["gen/lcm/loss"] > 0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    target = {
        k.removeprefix("losses.lcm.target."): v for k, v in state.items() if k.startswith("losses.lcm.")
    }
    generator = {
        k.removeprefix("generator.denoiser."): v for k, v in state.items() if k.startswith("generator.")
    }
    assert target and target.keys() == generator.keys(), "the EMA target is saved beside the generator"
    assert any(not torch.equal(target[k], generator[k]) for k in target)
