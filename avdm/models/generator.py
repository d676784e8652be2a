"""The few-step generator: a denoiser run on a short timestep ladder, with backward simulation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avdm.config_schema import check_ladder
from avdm.errors import ConfigError
from avdm.models.denoiser import Denoiser
from avdm.models.sampler_steps import deterministic_step

RENOISE = ("fresh", "deterministic")


@dataclass
class SimulationResult:
    """One backward-simulation draw.

    Attributes:
        x0: the generator's clean prediction at step ``k``, with gradient, ``(B, C, F, H, W)``.
        x_t: the noisy input of step ``k`` (no gradient), ``(B, C, F, H, W)``.
        t: normalized time of step ``k``, ``(B,)``.
        k: the step index whose prediction carries gradient.
    """

    x0: Tensor
    x_t: Tensor
    t: Tensor
    k: int


class FewStepGenerator(nn.Module):
    """``G_theta``: a trainable denoiser sampled on a fixed ladder of timesteps.

    Sampling (AVDM2 Algorithm 1, DMD2's backward simulation): start from ``z_T ~ N(0, I)`` at the first
    timestep, predict ``x0_hat``, re-noise it with fresh noise to the next timestep, repeat; the last
    prediction is the sample.

    Args:
        denoiser: the trainable network (usually initialized from the video teacher).
        timesteps: the ladder in the network's own timestep units, high to low
            (DDPM default ``999, 749, 499, 249``; a flow model uses ``t * T``).
        renoise: between steps, ``fresh`` noise (DMD2 / AVDM2 backward simulation) or the
            ``deterministic`` DDIM / Euler step with the predicted noise (AccVideo's students, which
            learn deterministic steps between trajectory key points).
    """

    def __init__(
        self, denoiser: Denoiser, timesteps: Sequence[float] = (999, 749, 499, 249), renoise: str = "fresh"
    ) -> None:
        super().__init__()
        if renoise not in RENOISE:
            raise ConfigError(f"module.generator_renoise={renoise!r}: expected one of {', '.join(RENOISE)}")
        self.renoise = renoise
        # The rule validate() checks too, here with the teacher's own T (numpy / tensor scalars as numbers).
        ladder = [s.item() if hasattr(s, "item") else s for s in timesteps]
        check_ladder("module.generator_timesteps", ladder, denoiser.schedule.num_train_timesteps)
        self.denoiser = denoiser
        self.timesteps = [float(s) for s in timesteps]
        # Plain floats, not a buffer: casting the module to bf16 must not move the ladder (499/999 -> 0.5).
        self.t_values = [float(denoiser.schedule.t_from_timestep(s)) for s in self.timesteps]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _t(self, k: int, batch: int) -> Tensor:
        device = next(self.denoiser.parameters()).device
        return torch.full((batch,), self.t_values[k], dtype=torch.float32, device=device)

    def _renoise(self, x0: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=device).to(x0)
        return self.denoiser.schedule.add_noise(x0, eps, self._t(k, x0.shape[0]))

    def step_input(self, z: Tensor, k: int, text: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x_{t_k}``: the input of step ``k``, reached from noise ``z`` by ``k`` steps without gradient.

        The first step's input is ``z`` itself (``z_T ~ N(0, I)``).
        """
        x_t = z
        schedule = self.denoiser.schedule
        with torch.no_grad():
            for j in range(k):
                t = self._t(j, z.shape[0])
                pred = self.denoiser(x_t, t, text)
                if self.renoise == "fresh":
                    x_t = self._renoise(schedule.to_x0(pred, x_t, t), j + 1, generator)
                else:
                    x_t = deterministic_step(schedule, pred, x_t, t, self._t(j + 1, z.shape[0]))
        return x_t

    def simulate(
        self, z: Tensor, text: Tensor, k: int, generator: torch.Generator | None = None
    ) -> SimulationResult:
        """Backward simulation: steps ``0 .. k-1`` without gradient, then step ``k`` with gradient.

        Args:
            z: starting noise ``(B, C, F, H, W)``.
            text: text embeddings ``(B, L, D)``.
            k: index in ``[0, num_steps)`` of the step that carries gradient.
            generator: RNG for the re-noising draws.
        """
        if not 0 <= k < self.num_steps:
            raise ValueError(f"k must be in [0, {self.num_steps}), got {k}")
        x_t = self.step_input(z, k, text, generator)
        t = self._t(k, z.shape[0])
        return SimulationResult(x0=self.denoiser.x0(x_t, t, text), x_t=x_t, t=t, k=k)

    @torch.no_grad()
    def sample(
        self, z: Tensor, text: Tensor, num_steps: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Run the first ``num_steps`` (default all) steps and return the last ``x0_hat``."""
        n = num_steps or self.num_steps
        return self.simulate(z, text, n - 1, generator).x0


def draw_simulation_step(num_steps: int, generator: torch.Generator) -> int:
    """The backward-simulation index ``k ~ U{0 .. num_steps-1}``.

    ``generator`` must be seeded identically on every rank (e.g. by the global step) so that
    all ranks run the same number of forward passes and collectives stay in lockstep.
    """
    return int(torch.randint(num_steps, (1,), generator=generator).item())
