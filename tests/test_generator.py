"""Few-step sampling, backward simulation, and the teacher's reference sampler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from avdm.models.denoiser import Denoiser
from avdm.models.generator import FewStepGenerator, draw_simulation_step
from avdm.models.sampler_steps import classifier_free_guidance, guided_prediction
from avdm.models.sampling import sample_teacher
from avdm.models.schedules import DDPMSchedule, FlowMatchingSchedule, NoiseSchedule


class PointMassDenoiser(Denoiser):
    """Exact denoiser of data concentrated at ``target`` (+ a learnable scale to carry gradients)."""

    def __init__(self, target: torch.Tensor, schedule: NoiseSchedule) -> None:
        super().__init__(torch.nn.Linear(1, 1), schedule)
        self.target = target
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def _call_model(self, x_t, timestep, text):
        self.calls += 1
        t = self.schedule.t_from_timestep(timestep.float())
        x0 = self.scale * self.target.expand_as(x_t) + 0.0 * text.sum()
        return self.schedule.from_x0(x0, x_t, t)

    def _feature_to_video(self, feature, x_t):
        return feature

    @property
    def default_feature_layers(self):
        return ()


def test_backward_simulation_gradient_flows_through_the_last_step_only(tiny_bundle, tiny_text):
    import copy

    student = copy.deepcopy(tiny_bundle.video_teacher).requires_grad_(True)
    gen = FewStepGenerator(student, (999, 749, 499, 249))
    z = torch.randn(2, *tiny_bundle.latent_shape)
    params = [p for p in gen.parameters() if p.requires_grad]
    sim = gen.simulate(z, tiny_text, k=2, generator=torch.Generator().manual_seed(0))
    assert sim.x0.requires_grad and not sim.x_t.requires_grad
    assert torch.allclose(sim.t, student.schedule.t_from_timestep(torch.tensor(499.0)).expand(2))
    grads = torch.autograd.grad(sim.x0.square().mean(), params)
    # The same loss on one step from the (constant) input of step k gives the same gradient.
    one_step = student.x0(sim.x_t, sim.t, tiny_text)
    torch.testing.assert_close(one_step, sim.x0)
    expected = torch.autograd.grad(one_step.square().mean(), params)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_simulate_runs_k_plus_one_forward_passes(k):
    den = PointMassDenoiser(torch.ones(1, 2, 1, 1, 1), DDPMSchedule())
    gen = FewStepGenerator(den, (999, 749, 499, 249))
    gen.simulate(torch.randn(3, 2, 1, 1, 1), torch.zeros(3, 1, 1), k)
    assert den.calls == k + 1


def test_renoising_uses_fresh_noise_and_is_reproducible():
    den = PointMassDenoiser(torch.full((1, 2, 1, 4, 4), 0.5), DDPMSchedule())
    gen = FewStepGenerator(den, (999, 499))
    z, text = torch.randn(2, 2, 1, 4, 4), torch.zeros(2, 1, 1)
    a = gen.step_input(z, 1, text, torch.Generator().manual_seed(1))
    b = gen.step_input(z, 1, text, torch.Generator().manual_seed(1))
    c = gen.step_input(z, 1, text, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # x_{t_1} = alpha x0_hat + sigma eps: its mean over noise is alpha * 0.5.
    alpha = den.schedule.alpha(den.schedule.t_from_timestep(torch.tensor([499.0])))
    many = gen.step_input(torch.randn(4000, 2, 1, 4, 4), 1, torch.zeros(4000, 1, 1))
    assert abs(many.mean().item() - 0.5 * alpha.item()) < 0.01


def test_generator_rejects_bad_timesteps():
    den = PointMassDenoiser(torch.ones(1), DDPMSchedule())
    for bad in [(), (249, 499), (999, 999), (1500, 10)]:
        with pytest.raises(ValueError, match="generator.timesteps"):
            FewStepGenerator(den, bad)
    with pytest.raises(ValueError, match="k must be"):
        FewStepGenerator(den, (999, 499)).simulate(torch.randn(1, 1, 1, 1, 1), torch.zeros(1, 1, 1), 2)


def test_simulation_step_is_identical_for_identically_seeded_ranks():
    draws_rank0 = [draw_simulation_step(4, torch.Generator().manual_seed(10 + i)) for i in range(50)]
    draws_rank1 = [draw_simulation_step(4, torch.Generator().manual_seed(10 + i)) for i in range(50)]
    assert draws_rank0 == draws_rank1 and set(draws_rank0) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "schedule, scheduler",
    [
        (
            DDPMSchedule(beta_schedule="scaled_linear"),
            DDIMScheduler(
                beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
            ),
        ),
        (FlowMatchingSchedule(shift=3.0), FlowMatchEulerDiscreteScheduler(shift=3.0)),
    ],
    ids=["ddim", "flow-euler"],
)
def test_teacher_sampler_lands_on_the_data_of_an_exact_denoiser(schedule, scheduler):
    target = torch.randn(1, 2, 2, 3, 3)
    den = PointMassDenoiser(target, schedule)
    out = sample_teacher(
        den, scheduler, torch.randn(2, 2, 2, 3, 3), torch.zeros(2, 1, 1), num_steps=10, guidance_scale=1.0
    )
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1, -1), rtol=1e-3, atol=1e-3)
    assert den.calls == 10


def test_few_step_generator_of_an_exact_denoiser_returns_the_data():
    target = torch.randn(1, 2, 2, 3, 3)
    gen = FewStepGenerator(PointMassDenoiser(target, DDPMSchedule()))
    out = gen.sample(torch.randn(2, 2, 2, 3, 3), torch.zeros(2, 1, 1))
    torch.testing.assert_close(out, target.expand(2, -1, -1, -1, -1), rtol=1e-4, atol=1e-4)


def test_cfg_conventions_agree_and_batch_cond_and_uncond():
    cond, uncond = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(
        classifier_free_guidance(cond, uncond, 7.5, "standard"),
        classifier_free_guidance(cond, uncond, 6.5, "dmd2"),
    )
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0, "standard"), cond)
    with pytest.raises(ValueError, match="convention"):
        classifier_free_guidance(cond, uncond, 2.0, "cfg++")
    den = PointMassDenoiser(torch.ones(1, 2, 1, 1, 1), DDPMSchedule())
    guided_prediction(
        den,
        torch.randn(2, 2, 1, 1, 1),
        torch.tensor([0.5, 0.5]),
        torch.zeros(2, 1, 1),
        torch.zeros(2, 1, 1),
        7.5,
    )
    assert den.calls == 1  # conditional and unconditional in one forward


def test_deterministic_renoising_is_the_ddim_step_and_needs_no_rng():
    target = torch.randn(1, 2, 2, 3, 3)
    den = PointMassDenoiser(target, FlowMatchingSchedule())
    gen = FewStepGenerator(den, (1000, 500), renoise="deterministic")
    z, text = torch.randn(2, 2, 2, 3, 3), torch.zeros(2, 1, 1)
    x_half = gen.step_input(z, 1, text)
    # Flow matching, exact denoiser: x_0.5 = 0.5 x0 + 0.5 eps_hat with eps_hat = z (the point mass's noise).
    torch.testing.assert_close(x_half, 0.5 * target.expand_as(z) + 0.5 * z)
    torch.testing.assert_close(gen.step_input(z, 1, text), x_half)
    with pytest.raises(ValueError, match="renoise"):
        FewStepGenerator(den, (1000, 500), renoise="sde")


def test_timestep_ladder_survives_a_bf16_cast():
    den = PointMassDenoiser(torch.ones(1, 2, 1, 1, 1), DDPMSchedule())
    gen = FewStepGenerator(den, (999, 749, 499, 249)).to(torch.bfloat16)
    t = gen._t(2, 3)
    assert t.dtype == torch.float32 and torch.equal(t, torch.full((3,), 499 / 999))
    assert torch.equal(den.schedule.timestep(t), torch.full((3,), 499))
