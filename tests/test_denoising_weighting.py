"""Weightings of eq. 2 (avdm.losses.functional.denoising_loss) against their definitions."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from avdm.losses.functional import denoising_loss
from avdm.models.denoiser import Denoiser
from avdm.models.schedules import DDPMSchedule


class _FixedPrediction(Denoiser):
    """A denoiser whose raw prediction is a fixed tensor (any parameterization)."""

    def __init__(self, prediction: Tensor, schedule: DDPMSchedule) -> None:
        super().__init__(nn.Linear(1, 1), schedule)
        self.prediction = prediction

    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        return self.prediction

    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        return feature

    @property
    def default_feature_layers(self) -> tuple[str, ...]:
        return ()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_truncated_snr_is_the_larger_of_the_x0_and_epsilon_errors(prediction_type: str) -> None:
    # Salimans & Ho 2022, truncated SNR weighting: max(||x0_hat - x0||^2, ||eps_hat - eps||^2).
    g = torch.Generator().manual_seed(0)
    shape = (4, 2, 3, 4, 4)
    x0, eps, prediction = (torch.randn(shape, generator=g) for _ in range(3))
    schedule = DDPMSchedule(prediction_type=prediction_type)
    t = torch.tensor([0.02, 0.3, 0.7, 0.97])  # SNR on both sides of 1
    assert (schedule.snr(t) > 1).any() and (schedule.snr(t) < 1).any()
    denoiser = _FixedPrediction(prediction, schedule)
    text = torch.zeros(4, 1, 1)

    loss = denoising_loss(denoiser, x0, text, t, eps=eps, weighting="truncated_snr")

    x_t = schedule.add_noise(x0, eps, t)
    x0_err = (schedule.to_x0(prediction, x_t, t) - x0).pow(2).flatten(1).mean(1)
    eps_err = (schedule.to_eps(prediction, x_t, t) - eps).pow(2).flatten(1).mean(1)
    expected = torch.maximum(x0_err, eps_err).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)
    # and it is not the plain loss: at the high-noise samples the x0 error dominates
    assert not torch.isclose(loss, denoising_loss(denoiser, x0, text, t, eps=eps), rtol=1e-3)


def test_min_snr_caps_the_x0_weight_at_gamma() -> None:
    g = torch.Generator().manual_seed(1)
    shape = (3, 2, 2, 4, 4)
    x0, eps, prediction = (torch.randn(shape, generator=g) for _ in range(3))
    schedule = DDPMSchedule(prediction_type="epsilon")
    t = torch.tensor([0.01, 0.5, 0.95])
    denoiser = _FixedPrediction(prediction, schedule)
    loss = denoising_loss(
        denoiser, x0, torch.zeros(3, 1, 1), t, eps=eps, weighting="min_snr", min_snr_gamma=5.0
    )
    x_t = schedule.add_noise(x0, eps, t)
    x0_err = (schedule.to_x0(prediction, x_t, t) - x0).pow(2).flatten(1).mean(1)
    expected = (schedule.snr(t).clamp(max=5.0) * x0_err).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)


def test_unknown_weighting_names_the_accepted_ones() -> None:
    schedule = DDPMSchedule()
    denoiser = _FixedPrediction(torch.zeros(1, 1, 1, 2, 2), schedule)
    with pytest.raises(ValueError, match="truncated_snr"):
        denoising_loss(
            denoiser, torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 1), torch.tensor([0.5]), weighting="snr"
        )
