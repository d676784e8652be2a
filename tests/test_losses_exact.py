"""Exact identities of the loss math: eq. 8's surrogate gradient, GAN losses on hand-computed logits,
trajectory distances and steps, and the plugins' use of them (autograd against explicit formulas)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from avdm.losses import FrameSDMLoss, StepContext, TeacherBank, TrajectoryRegressionLoss, VideoSDMLoss
from avdm.losses.functional import (
    gan_critic_loss,
    gan_generator_loss,
    regression_distance,
    sdm_gradient,
    sdm_surrogate,
)
from avdm.models.denoiser import Denoiser, freeze_
from avdm.models.feature_discriminator import default_feature_layers
from avdm.models.generator import FewStepGenerator
from avdm.models.heads import MultiScaleDiscriminatorHead
from avdm.models.sampler_steps import classifier_free_guidance, deterministic_step
from avdm.models.schedules import DDPMSchedule, FlowMatchingSchedule, NoiseSchedule

SCHEDULES = {
    "ddpm_eps": lambda: DDPMSchedule(prediction_type="epsilon"),
    "ddpm_v": lambda: DDPMSchedule(prediction_type="v_prediction"),
    "flow": lambda: FlowMatchingSchedule(shift=3.0),
}


class AffineNet(nn.Module):
    """``pred = a * x + b * text_mean + c * t`` per channel: cheap, text- and time-dependent, exact."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(channels, generator=g))
        self.b = nn.Parameter(torch.randn(channels, generator=g))
        self.c = nn.Parameter(torch.randn(channels, generator=g))

    def forward(self, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
        shape = (1, -1, 1, 1, 1)
        return (
            self.a.view(shape) * x
            + self.b.view(shape) * text.mean((1, 2)).view(-1, 1, 1, 1, 1)
            + self.c.view(shape) * t.view(-1, 1, 1, 1, 1)
        )


class AffineDenoiser(Denoiser):
    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        return self.model(x_t, self.schedule.t_from_timestep(timestep).to(x_t.device), text)

    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        return feature

    @property
    def default_feature_layers(self) -> tuple[str, ...]:
        return ()


# --- eq. 8 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sdm_surrogate_gradient_is_the_injected_gradient(reduction: str) -> None:
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64)
    loss = sdm_surrogate(x0, grad, reduction)
    (autograd,) = torch.autograd.grad(loss, x0)
    expected = grad if reduction == "sum" else grad / grad.numel()
    torch.testing.assert_close(autograd.double(), expected, rtol=1e-6, atol=1e-7)
    expected_value = 0.5 * grad.pow(2).sum() if reduction == "sum" else 0.5 * grad.pow(2).mean()
    torch.testing.assert_close(loss.double(), expected_value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_sdm_gradient_is_eq8_and_dmd2s_x0_form(name: str) -> None:
    torch.manual_seed(1)
    schedule: NoiseSchedule = SCHEDULES[name]()
    x0 = torch.randn(4, 4, 3, 6, 6)
    t = torch.tensor([0.2, 0.4, 0.7, 0.95])
    x_t = schedule.add_noise(x0, torch.randn_like(x0), t)
    pred_real, pred_fake = torch.randn_like(x0), torch.randn_like(x0)
    eps_real, eps_fake = schedule.to_eps(pred_real, x_t, t), schedule.to_eps(pred_fake, x_t, t)
    x0_real, x0_fake_hat = schedule.to_x0(pred_real, x_t, t), schedule.to_x0(pred_fake, x_t, t)
    norm_eps = 1e-6

    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    grad, w, norm = sdm_gradient(x0, x0_real, eps_real, eps_fake, alpha, sigma, norm_eps)

    mean_abs = (x0 - x0_real).abs().mean(dim=(1, 2, 3, 4))
    w_expected = schedule.sigma(t) / (schedule.alpha(t) * (mean_abs + norm_eps))
    torch.testing.assert_close(norm, mean_abs)
    torch.testing.assert_close(w, w_expected)
    torch.testing.assert_close(grad, w_expected.view(-1, 1, 1, 1, 1) * (eps_real - eps_fake))
    # The same number in x0 space, as DMD2 writes it: (x0_fake_hat - x0_real_hat) / mean|x0 - x0_real_hat|.
    torch.testing.assert_close(
        grad, (x0_fake_hat - x0_real) / (mean_abs + norm_eps).view(-1, 1, 1, 1, 1), rtol=2e-4, atol=2e-4
    )


def test_sdm_gradient_vanishes_when_real_equals_fake() -> None:
    schedule = DDPMSchedule()
    x0 = torch.randn(2, 4, 2, 4, 4, requires_grad=True)
    t = torch.tensor([0.3, 0.9])
    eps = torch.randn_like(x0)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    grad, _, _ = sdm_gradient(x0, torch.randn_like(x0), eps, eps.clone(), alpha, sigma)
    (autograd,) = torch.autograd.grad(sdm_surrogate(x0, grad), x0)
    assert torch.equal(autograd, torch.zeros_like(x0))


def _sdm_setup(cls: type, guidance_scale: float, convention: str, **kwargs: object):
    schedule = DDPMSchedule()
    teacher = freeze_(AffineDenoiser(AffineNet(4, seed=0), schedule))
    teachers = TeacherBank(teacher, teacher)
    plugin = cls(
        guidance_scale=guidance_scale,
        guidance_convention=convention,
        t_min=0.1,
        t_max=0.9,
        reduction="sum",  # eq. 8 per element: the gradient reaching x0 is exactly w (eps_real - eps_fake)
        **kwargs,
    )
    plugin.bind(teachers)
    with torch.no_grad():  # move the fake score away from the teacher so that eq. 8 is not zero
        plugin.fake_score.model.a.add_(0.3)
        plugin.fake_score.model.c.sub_(0.2)
    return plugin, teachers, teacher, schedule


@pytest.mark.parametrize(
    ("guidance_scale", "convention"), [(1.0, "standard"), (4.0, "standard"), (2.5, "dmd2")]
)
def test_video_sdm_plugin_gradient_equals_eq8(guidance_scale: float, convention: str) -> None:
    plugin, teachers, teacher, schedule = _sdm_setup(VideoSDMLoss, guidance_scale, convention)
    B = 3
    text, uncond = torch.randn(B, 5, 7), torch.zeros(B, 5, 7)
    x0 = torch.randn(B, 4, 2, 3, 3, requires_grad=True)
    ctx = StepContext(x0, text, {}, teachers, None, uncond_text=uncond)  # type: ignore[arg-type]

    torch.manual_seed(123)
    out = plugin.generator_loss(ctx)
    (autograd,) = torch.autograd.grad(out.loss, x0)

    # Replay the plugin's draws (t, then the noise) and evaluate eq. 8 by hand.
    torch.manual_seed(123)
    t = schedule.sample_t(B, 0.1, 0.9)
    x_t = schedule.add_noise(x0.detach(), torch.randn_like(x0), t)
    with torch.no_grad():
        pred_real = classifier_free_guidance(
            teacher(x_t, t, text), teacher(x_t, t, uncond), guidance_scale, convention
        )
        eps_real, x0_real = schedule.to_eps(pred_real, x_t, t), schedule.to_x0(pred_real, x_t, t)
        eps_fake = schedule.to_eps(plugin.fake_score(x_t, t, text), x_t, t)
    w = schedule.sigma(t) / (schedule.alpha(t) * ((x0.detach() - x0_real).abs().mean((1, 2, 3, 4)) + 1e-6))
    expected = w.view(-1, 1, 1, 1, 1) * (eps_real - eps_fake)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(autograd, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["grad_abs_mean"], expected.abs().mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["w"], w.mean())


def test_frame_sdm_gradient_touches_exactly_k_frames_per_sample() -> None:
    plugin, teachers, _, _ = _sdm_setup(FrameSDMLoss, 1.0, "standard", num_frames=3)
    x0 = torch.randn(4, 4, 8, 3, 3, requires_grad=True)
    ctx = StepContext(x0, torch.randn(4, 5, 7), {}, teachers, None)  # type: ignore[arg-type]
    (autograd,) = torch.autograd.grad(plugin.generator_loss(ctx).loss, x0)
    touched = autograd.abs().sum(dim=(1, 3, 4)) > 0  # (B, F)
    assert touched.sum(dim=1).tolist() == [3, 3, 3, 3]


def test_sdm_zero_gradient_when_fake_score_equals_teacher() -> None:
    schedule = DDPMSchedule()
    teacher = freeze_(AffineDenoiser(AffineNet(4, seed=0), schedule))
    plugin = VideoSDMLoss()
    plugin.bind(TeacherBank(teacher))
    x0 = torch.randn(2, 4, 2, 3, 3, requires_grad=True)
    ctx = StepContext(x0, torch.randn(2, 5, 7), {}, TeacherBank(teacher), None)  # type: ignore[arg-type]
    (autograd,) = torch.autograd.grad(plugin.generator_loss(ctx).loss, x0)
    assert torch.equal(autograd, torch.zeros_like(x0))


# --- GAN losses (eqs. 6-7) --------------------------------------------------------------------------------
REAL = [[0.0, 1.0, -2.0], [3.0, -0.5, 0.25]]
FAKE = [[-1.0, 0.5, 2.0], [0.0, -3.0, 1.5]]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_gan_losses_equal_their_formulas_on_hand_computed_logits() -> None:
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    flat_real, flat_fake = sum(REAL, []), sum(FAKE, [])

    ns_gen = _mean([_softplus(-x) for x in flat_fake])
    hinge_gen = _mean([-x for x in flat_fake])
    ns_critic = _mean([_softplus(-x) for x in flat_real]) + _mean([_softplus(x) for x in flat_fake])
    hinge_critic = _mean([max(0.0, 1 - x) for x in flat_real]) + _mean([max(0.0, 1 + x) for x in flat_fake])

    assert gan_generator_loss(fake, "non_saturating").item() == pytest.approx(ns_gen, rel=1e-6)
    assert gan_generator_loss(fake, "hinge").item() == pytest.approx(hinge_gen, rel=1e-6)
    assert gan_critic_loss(real, fake, "non_saturating").item() == pytest.approx(ns_critic, rel=1e-6)
    assert gan_critic_loss(real, fake, "hinge").item() == pytest.approx(hinge_critic, rel=1e-6)
    # A few anchors computed on paper: softplus(0) = log 2; hinge terms of the first rows.
    assert gan_generator_loss(torch.zeros(1, 1)).item() == pytest.approx(math.log(2), rel=1e-6)
    assert gan_critic_loss(
        torch.tensor([[0.0, 1.0, -2.0]]), torch.tensor([[-1.0, 0.5, 2.0]]), "hinge"
    ).item() == pytest.approx((1 + 0 + 3) / 3 + (0 + 1.5 + 3) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        gan_generator_loss(fake, "wgan")


def test_gan_generator_gradient_on_logits() -> None:
    logits = torch.tensor(FAKE, requires_grad=True)
    (g,) = torch.autograd.grad(gan_generator_loss(logits, "non_saturating"), logits)
    torch.testing.assert_close(g, -torch.sigmoid(-logits.detach()) / logits.numel())


# --- the discriminator head ---------------------------------------------------------------------------------
def test_head_shapes_and_conditioning() -> None:
    torch.manual_seed(0)
    head = MultiScaleDiscriminatorHead([8, 16, 16], text_dim=6, hidden_channels=8, num_layers=2)
    feats = [torch.randn(2, 8, 4, 8, 8), torch.randn(2, 16, 4, 4, 4), torch.randn(2, 16, 4, 4, 4)]
    t, text = torch.tensor([0.1, 0.4]), torch.randn(2, 3, 6)
    logits = head(feats, t, text)
    assert logits.shape == (2, 4 * 4 * 4)
    assert not torch.allclose(logits, head(feats, torch.tensor([0.3, 0.9]), text))
    assert not torch.allclose(logits, head(feats, t, text + 1.0))
    # Sample 0 does not depend on sample 1's inputs (no batch statistics).
    other = [f.clone() for f in feats]
    other[0][1] += 5.0
    torch.testing.assert_close(head(other, t, text)[0], logits[0])


# --- trajectory regression ---------------------------------------------------------------------------------
def test_regression_distances_equal_their_formulas() -> None:
    x = torch.zeros(2, 4)
    y = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 4.0]])  # per-sample mean squares 1 and 4
    assert regression_distance(x, y, "mse").item() == pytest.approx((1 + 4) / 2)
    c = 0.5
    expected = ((math.sqrt(1 + c**2) - c) + (math.sqrt(4 + c**2) - c)) / 2
    assert regression_distance(x, y, "pseudo_huber", c).item() == pytest.approx(expected, rel=1e-6)
    # Small errors: pseudo-Huber ~ mse / (2c); large errors: ~ RMS.
    small = regression_distance(torch.zeros(1, 4), torch.full((1, 4), 1e-3), "pseudo_huber", 1.0).item()
    assert small == pytest.approx(1e-6 / 2, rel=1e-3)


def test_deterministic_step_is_euler_for_flow_and_exact_on_a_single_point() -> None:
    torch.manual_seed(0)
    flow = FlowMatchingSchedule()
    x_t, v = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    t, t_next = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.6, 0.2, 0.0])
    torch.testing.assert_close(
        deterministic_step(flow, v, x_t, t, t_next), x_t + (t_next - t).view(-1, 1, 1, 1, 1) * v
    )
    # With the exact prediction of a single data point, DDIM lands exactly on x_{t'} = alpha' x0 + sigma' eps.
    schedules = (DDPMSchedule(prediction_type="epsilon"), DDPMSchedule(prediction_type="v_prediction"), flow)
    for schedule in schedules:
        x0, eps = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
        x_t = schedule.add_noise(x0, eps, t)
        pred = schedule.target(x0, eps, t)
        torch.testing.assert_close(
            deterministic_step(schedule, pred, x_t, t, t_next),
            schedule.add_noise(x0, eps, t_next),
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.parametrize("distance", ["mse", "pseudo_huber"])
def test_trajectory_regression_plugin_equals_formula(distance: str) -> None:
    schedule = FlowMatchingSchedule()
    student = AffineDenoiser(AffineNet(4, seed=3), schedule)
    generator = FewStepGenerator(student, timesteps=[1000, 400])
    traj = torch.randn(2, 2, 4, 2, 3, 3)  # N = 2 key points, so k = 0 for every sample
    times = torch.tensor([[1.0, 0.4], [0.8, 0.3]])
    text = torch.randn(2, 5, 7)
    plugin = TrajectoryRegressionLoss(distance=distance, huber_c=0.05)
    ctx = StepContext(
        torch.zeros(2), text, {"trajectory": traj, "trajectory_t": times}, TeacherBank(student), generator
    )
    loss = plugin.generator_loss(ctx).loss
    t, t_next = times[:, 0], times[:, 1]
    v = student(traj[:, 0], t, text)
    x_hat = traj[:, 0] + (t_next - t).view(-1, 1, 1, 1, 1) * v
    ms = (x_hat - traj[:, 1]).pow(2).flatten(1).mean(1)
    expected = ms.mean() if distance == "mse" else ((ms + 0.05**2).sqrt() - 0.05).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.model.a.grad is not None and student.model.a.grad.abs().sum() > 0


def test_default_feature_layers_pick_three_spatial_scales() -> None:
    names = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block"]
    sd15 = [torch.Size([1, c, 16, s, s]) for c, s in [(320, 32), (640, 16), (1280, 8), (1280, 8), (1280, 8)]]
    assert default_feature_layers(names, sd15) == ["down_blocks.0", "down_blocks.1", "mid_block"]
    blocks = ["blocks.0", "blocks.20", "blocks.39"]
    same = [torch.Size([1, 5120, 4, 30, 52])] * 3  # a transformer: one token grid
    assert default_feature_layers(blocks, same) == blocks
    tiny = [torch.Size([1, c, 4, s, s]) for c, s in [(32, 8), (64, 4), (64, 4), (64, 4)]]
    tiny_names = names[:3] + ["mid_block"]
    assert default_feature_layers(tiny_names, tiny) == ["down_blocks.0", "down_blocks.2", "mid_block"]
