"""Schedule math against diffusers' own schedulers, and parameterization round trips."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from avdm.models.schedules import DDPMSchedule, FlowMatchingSchedule


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_ddpm_add_noise_matches_diffusers(beta_schedule):
    ours = DDPMSchedule(beta_schedule=beta_schedule)
    ref = DDPMScheduler(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012)
    x0, eps = torch.randn(6, 4, 2, 3, 3), torch.randn(6, 4, 2, 3, 3)
    timesteps = torch.tensor([0, 1, 249, 500, 998, 999])
    t = ours.t_from_timestep(timesteps)
    assert torch.equal(ours.timestep(t), timesteps)
    # diffusers accumulates alpha_bar in float32, avdm in float64 then casts: up to 3e-6 apart (200 seeds).
    torch.testing.assert_close(
        ours.add_noise(x0, eps, t), ref.add_noise(x0, eps, timesteps), rtol=1e-5, atol=1e-5
    )


def test_ddpm_v_target_matches_diffusers_velocity():
    ours = DDPMSchedule(prediction_type="v_prediction")
    ref = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    x0, eps = torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4, 2, 3, 3)
    timesteps = torch.tensor([10, 400, 990])
    t = ours.t_from_timestep(timesteps)
    torch.testing.assert_close(
        ours.target(x0, eps, t), ref.get_velocity(x0, eps, timesteps), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
def test_flow_matching_matches_diffusers(shift):
    ours = FlowMatchingSchedule(shift=shift)
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(5)
    # The scheduler's sigmas are the shift of a uniform grid (whose low end diffusers itself shifts once).
    grid = torch.linspace(1.0, float(ours.shift_t(torch.tensor(1 / 1000))), 5)
    torch.testing.assert_close(ours.shift_t(grid), ref.sigmas[:-1], rtol=1e-5, atol=1e-6)
    # Forward process: scale_noise at the scheduler's timesteps.
    x0, eps = torch.randn(5, 4, 2, 3, 3), torch.randn(5, 4, 2, 3, 3)
    t = ours.t_from_timestep(ref.timesteps)
    expected = torch.stack(
        [ref.scale_noise(x0[i : i + 1], ref.timesteps[i : i + 1], eps[i : i + 1])[0] for i in range(5)]
    )
    torch.testing.assert_close(ours.add_noise(x0, eps, t), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.timestep(t), ref.timesteps)


@pytest.mark.parametrize(
    "schedule",
    [
        DDPMSchedule(prediction_type="epsilon"),
        DDPMSchedule(prediction_type="v_prediction"),
        DDPMSchedule(prediction_type="sample"),
        FlowMatchingSchedule(),
        FlowMatchingSchedule(prediction_type="sample"),
    ],
    ids=["ddpm-eps", "ddpm-v", "ddpm-x0", "flow-v", "flow-x0"],
)
def test_parameterization_round_trip(schedule):
    x0, eps = torch.randn(4, 4, 2, 3, 3), torch.randn(4, 4, 2, 3, 3)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    x_t = schedule.add_noise(x0, eps, t)
    pred = schedule.target(x0, eps, t)  # the exact prediction of a perfect network
    torch.testing.assert_close(schedule.to_x0(pred, x_t, t), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(schedule.to_eps(pred, x_t, t), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(schedule.from_x0(x0, x_t, t), pred, rtol=1e-4, atol=1e-4)
    sigma = schedule.sigma(t).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(schedule.score(pred, x_t, t), -eps / sigma, rtol=1e-4, atol=1e-4)


def test_flow_velocity_is_eps_minus_x0_and_alpha_sigma():
    s = FlowMatchingSchedule()
    t = torch.tensor([0.25, 0.75])
    assert torch.allclose(s.alpha(t), 1 - t) and torch.allclose(s.sigma(t), t)
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(s.target(x0, eps, t), eps - x0)


def test_sample_t_respects_range_and_rejects_bad_ranges():
    s = DDPMSchedule()
    t = s.sample_t(1000, 0.2, 0.98, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.2 and t.max() <= 0.98 and t.std() > 0.1
    for bad in [(0.5, 0.5), (0.9, 0.1), (-0.1, 0.5), (0.2, 1.5)]:
        with pytest.raises(ValueError, match="t_min"):
            s.sample_t(4, *bad)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPMSchedule(beta_schedule="cosine-ish")
    with pytest.raises(ValueError, match="prediction_type"):
        DDPMSchedule(prediction_type="flow")
    with pytest.raises(ValueError, match="shift"):
        FlowMatchingSchedule(shift=0)


# --- the full scheduler config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
        {"beta_schedule": "linear", "trained_betas": torch.linspace(1e-4, 0.03, 1000).tolist()},
    ],
    ids=["scaled_linear", "linear", "cosine", "sigmoid", "zero_snr_v", "trained_betas"],
)
def test_noise_levels_are_diffusers_own_for_every_setting(config):
    """alpha_t^2 at every index is diffusers' alphas_cumprod for the same config, as a teacher was trained."""
    schedule = DDPMSchedule.from_scheduler_config(config)
    reference = DDPMScheduler.from_config(config).alphas_cumprod.float()
    t = torch.arange(1000) / 999
    torch.testing.assert_close(schedule.alpha(t) ** 2, reference, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones(1000))


def test_zero_terminal_snr_is_honoured_with_v_and_refused_with_epsilon():
    sd = {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "v_prediction",
    }
    zero = DDPMSchedule.from_scheduler_config({**sd, "rescale_betas_zero_snr": True})
    plain = DDPMSchedule.from_scheduler_config(sd)
    one = torch.ones(1)
    assert float(zero.alpha(one)) == 0.0 and float(zero.snr(one)) == 0.0
    assert float(plain.alpha(one) ** 2) == pytest.approx(0.0047, abs=2e-4), "what was silently used before"
    x_t, v = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(zero.to_x0(v, x_t, one.expand(2)), -v), "x0 = alpha x_t - sigma v at t = 1"
    with pytest.raises(ValueError, match="rescale_betas_zero_snr=True with prediction_type='epsilon'"):
        DDPMSchedule.from_scheduler_config({"rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="trained_betas: 3 values"):
        DDPMSchedule.from_scheduler_config({"trained_betas": [0.1, 0.2, 0.3]})


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_flow_shift_grid_is_diffusers_sigmas(shift):
    """The shifted time grid equals the sigmas FlowMatchEulerDiscreteScheduler samples with."""
    schedule = FlowMatchingSchedule.from_scheduler_config({"shift": shift})
    reference = FlowMatchEulerDiscreteScheduler(shift=shift)
    reference.set_timesteps(50)
    # diffusers' unshifted grid runs from 1 to its sigma_min (itself the shift of 1/T), then shifts it.
    u = torch.linspace(1.0, float(reference.sigma_min), 50)
    torch.testing.assert_close(schedule.shift_t(u), reference.sigmas[:-1].float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "key",
    [
        "use_dynamic_shifting",
        "shift_terminal",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "invert_sigmas",
    ],
)
def test_flow_settings_avdm_cannot_honour_are_refused(key):
    with pytest.raises(ValueError, match=f"the teacher's scheduler sets {key}="):
        FlowMatchingSchedule.from_scheduler_config(
            {"shift": 3.0, key: 0.5 if key == "shift_terminal" else True}
        )
