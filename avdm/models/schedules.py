"""Noise schedules: the forward process ``x_t = alpha_t x0 + sigma_t eps`` and parameterization changes.

Every schedule in avdm is addressed by a normalized time ``t in [0, 1]`` (a fraction of the
training horizon T), so config values such as ``t_min: 0.2`` mean the same thing for every model
family. ``timestep(t)`` gives what the network itself receives (an integer index for DDPM, ``t * T``
for flow matching) and ``t_from_timestep`` inverts it.

Two families:

* :class:`DDPMSchedule` (SD1.5 / AnimateDiff): discrete ``alpha_bar`` from a beta schedule,
  ``alpha_t = sqrt(alpha_bar)``, ``sigma_t = sqrt(1 - alpha_bar)``; epsilon or v prediction.
* :class:`FlowMatchingSchedule` (Wan, HunyuanVideo, AccVideo): ``alpha_t = 1 - t``, ``sigma_t = t``,
  the network predicts the velocity ``v = eps - x0``; an optional timestep shift warps the
  time grid used for sampling and training.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from avdm.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow", "sample")
T_DENSITIES = ("uniform", "logit_normal")


def _expand(coef: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample coefficient ``(B,)`` against ``like`` ``(B, ...)``."""
    return coef.to(dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.ndim - 1)))


class NoiseSchedule(abc.ABC):
    """The forward process of one model role and conversions between its parameterizations.

    Args:
        prediction_type: what the network predicts: ``epsilon``, ``v_prediction`` (DDPM v),
            ``flow`` (velocity ``eps - x0``) or ``sample`` (x0 itself).
        num_train_timesteps: the training horizon T of the network's timestep input.
    """

    def __init__(self, prediction_type: str, num_train_timesteps: int = 1000) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps

    # --- the forward process -------------------------------------------------------------
    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal coefficient ``alpha_t`` for normalized times ``t`` of shape ``(B,)``."""

    @abc.abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise coefficient ``sigma_t`` for normalized times ``t`` of shape ``(B,)``."""

    @abc.abstractmethod
    def timestep(self, t: Tensor) -> Tensor:
        """The network's timestep input for normalized times ``t`` ``(B,)``."""

    @abc.abstractmethod
    def t_from_timestep(self, timestep: Tensor | float) -> Tensor:
        """Inverse of :meth:`timestep`: normalized time for a network (or scheduler) timestep."""

    def shift_t(self, u: Tensor) -> Tensor:
        """Map uniform times to the schedule's own time grid (identity unless the family shifts)."""
        return u

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha_t x0 + sigma_t eps`` (forward process). ``x0, eps: (B, ...)``, ``t: (B,)``."""
        return _expand(self.alpha(t), x0) * x0 + _expand(self.sigma(t), x0) * eps

    # --- parameterizations -----------------------------------------------------------------
    def to_x0(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The clean-sample estimate implied by a raw network prediction."""
        a, s = _expand(self.alpha(t), x_t), _expand(self.sigma(t), x_t)
        if self.prediction_type == "epsilon":
            return (x_t - s * pred) / a
        if self.prediction_type == "v_prediction":  # v = a eps - s x0, a^2 + s^2 = 1
            return a * x_t - s * pred
        if self.prediction_type == "flow":  # x_t = (1 - t) x0 + t eps, v = eps - x0
            return x_t - s * pred
        return pred

    def to_eps(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise estimate implied by a raw network prediction."""
        a, s = _expand(self.alpha(t), x_t), _expand(self.sigma(t), x_t)
        if self.prediction_type == "epsilon":
            return pred
        if self.prediction_type == "v_prediction":
            return s * x_t + a * pred
        if self.prediction_type == "flow":
            return x_t + a * pred
        return (x_t - a * pred) / s

    def from_x0(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The raw prediction (in this schedule's parameterization) that corresponds to ``x0``."""
        a, s = _expand(self.alpha(t), x_t), _expand(self.sigma(t), x_t)
        eps = (x_t - a * x0) / s
        return self.target(x0, eps, t)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The regression target of the denoising loss (eq. 2) in this parameterization."""
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            return _expand(self.alpha(t), x0) * eps - _expand(self.sigma(t), x0) * x0
        if self.prediction_type == "flow":
            return eps - x0
        return x0

    def score(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """``s(x_t) = -eps_hat / sigma_t``."""
        return -self.to_eps(pred, x_t, t) / _expand(self.sigma(t), x_t)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``alpha_t^2 / sigma_t^2``."""
        return (self.alpha(t) / self.sigma(t)) ** 2

    def sample_t(
        self,
        batch_size: int,
        t_min: float = 0.0,
        t_max: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        density: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> Tensor:
        """Draw ``u`` in ``[t_min, t_max]``, then the family's shift; shape ``(batch_size,)``.

        ``density``: ``uniform`` (``u ~ U[t_min, t_max]``) or ``logit_normal`` (SD3, Esser et al. 2024:
        ``sigmoid(n)``, ``n ~ N(logit_mean, logit_std^2)``, mapped affinely onto ``[t_min, t_max]``), which
        puts most samples at middle noise levels where the flow-matching target is hardest to predict.
        """
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"t-range must satisfy 0 <= t_min < t_max <= 1, got [{t_min}, {t_max}]")
        if density not in T_DENSITIES:
            raise ValueError(f"density must be one of {T_DENSITIES}, got {density!r}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        where = generator.device if generator else device
        if density == "uniform":
            u = torch.rand(batch_size, generator=generator, device=where)
        else:
            n = torch.randn(batch_size, generator=generator, device=where)
            u = torch.sigmoid(logit_mean + logit_std * n)
        return self.shift_t(t_min + (t_max - t_min) * u).to(device)


class DDPMSchedule(NoiseSchedule):
    """Discrete-time DDPM schedule: ``alpha_bar`` exactly as diffusers' ``DDPMScheduler`` builds it.

    Normalized time ``t`` maps to the integer index ``n = round(t (T - 1))``; ``alpha_t, sigma_t`` are
    read at that index, so what the network sees and the noise level always agree. The betas come from
    diffusers itself (every ``beta_schedule``, ``trained_betas``, ``rescale_betas_zero_snr``), so a
    teacher is distilled against the noise levels it was trained with, never a re-derivation of them.

    Args:
        beta_schedule: ``scaled_linear`` (SD1.5 image models), ``linear`` (AnimateDiff motion
            modules), ``squaredcos_cap_v2`` or ``sigmoid``.
        beta_start, beta_end: the end points of the beta schedule.
        prediction_type: ``epsilon`` or ``v_prediction`` (also ``sample``).
        trained_betas: explicit betas (``num_train_timesteps`` of them), overriding the schedule.
        rescale_betas_zero_snr: rescale to zero terminal SNR (Lin et al. 2024): ``alpha_bar`` ends at 0.
            Needs ``v_prediction`` or ``sample``: an epsilon prediction carries no ``x0`` at ``t = 1``.
    """

    BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
    # Keys of a diffusers scheduler config that set the training noise levels (the rest only sampling).
    CONFIG_KEYS = (
        "beta_schedule",
        "beta_start",
        "beta_end",
        "prediction_type",
        "num_train_timesteps",
        "trained_betas",
        "rescale_betas_zero_snr",
    )

    def __init__(
        self,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        prediction_type: str = "epsilon",
        num_train_timesteps: int = 1000,
        trained_betas: Sequence[float] | None = None,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        from diffusers import DDPMScheduler

        super().__init__(prediction_type, num_train_timesteps)
        if prediction_type == "flow":
            raise ConfigError(
                "DDPMSchedule.prediction_type must be epsilon, v_prediction or sample, got 'flow'"
            )
        if beta_schedule not in self.BETA_SCHEDULES and trained_betas is None:
            raise ConfigError(f"beta_schedule must be one of {self.BETA_SCHEDULES}, got {beta_schedule!r}")
        if trained_betas is not None and len(trained_betas) != num_train_timesteps:
            raise ConfigError(
                f"trained_betas: {len(trained_betas)} values for num_train_timesteps={num_train_timesteps}"
            )
        if rescale_betas_zero_snr and prediction_type == "epsilon":
            raise ConfigError(
                "rescale_betas_zero_snr=True with prediction_type='epsilon': at zero terminal SNR an epsilon "
                "prediction gives no x0 at t=1; use a v_prediction teacher (as zero-SNR models are trained)"
            )
        reference = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=None if trained_betas is None else list(trained_betas),
            prediction_type=prediction_type,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self.beta_schedule = beta_schedule
        self.alphas_cumprod = reference.alphas_cumprod.to(torch.float32)

    @classmethod
    def from_scheduler_config(cls, config: Any) -> DDPMSchedule:
        """Build from a diffusers scheduler config (``scheduler.config`` of a pretrained pipeline): every key
        that sets the training noise levels is honoured; sampler-only keys are the sampler's."""
        from diffusers import DDPMScheduler

        get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
        given = {k: get(k) for k in cls.CONFIG_KEYS if get(k) is not None}
        # Missing keys take diffusers' defaults, as the scheduler the teacher was trained with did.
        defaults = inspect.signature(DDPMScheduler.__init__).parameters
        return cls(**{k: given.get(k, defaults[k].default) for k in cls.CONFIG_KEYS})

    def index(self, t: Tensor) -> Tensor:
        """Integer timestep index ``n = round(t (T - 1))``, shape of ``t``."""
        return (
            (t.float() * (self.num_train_timesteps - 1)).round().long().clamp(0, self.num_train_timesteps - 1)
        )

    def _alpha_bar(self, t: Tensor) -> Tensor:
        return self.alphas_cumprod.to(t.device)[self.index(t)]

    def alpha(self, t: Tensor) -> Tensor:
        return self._alpha_bar(t).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return (1.0 - self._alpha_bar(t)).sqrt()

    def timestep(self, t: Tensor) -> Tensor:
        return self.index(t)

    def t_from_timestep(self, timestep: Tensor | float) -> Tensor:
        return torch.as_tensor(timestep, dtype=torch.float32) / (self.num_train_timesteps - 1)


class FlowMatchingSchedule(NoiseSchedule):
    """Rectified-flow schedule: ``alpha_t = 1 - t``, ``sigma_t = t``, velocity prediction.

    Args:
        shift: timestep shift ``t' = s t / (1 + (s - 1) t)`` applied by :meth:`shift_t` (as in
            diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s)``); 1 disables it.
        prediction_type: ``flow`` (velocity ``eps - x0``) or ``sample``.
    """

    def __init__(
        self, shift: float = 1.0, prediction_type: str = "flow", num_train_timesteps: int = 1000
    ) -> None:
        super().__init__(prediction_type, num_train_timesteps)
        if prediction_type not in ("flow", "sample"):
            raise ValueError(
                f"FlowMatchingSchedule.prediction_type must be 'flow' or 'sample', got {prediction_type!r}"
            )
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.shift = float(shift)

    # Flow scheduler settings that would move the noise levels away from the plain shifted grid.
    UNSUPPORTED = {
        "use_dynamic_shifting": "dynamic (resolution-dependent) shifting; set model.shift to the shift "
        "the teacher uses at this resolution",
        "shift_terminal": "a stretched terminal sigma",
        "use_karras_sigmas": "Karras sigmas",
        "use_exponential_sigmas": "exponential sigmas",
        "use_beta_sigmas": "beta sigmas",
        "invert_sigmas": "inverted sigmas",
    }

    @classmethod
    def from_scheduler_config(
        cls, config: Mapping[str, Any], shift: float | None = None
    ) -> FlowMatchingSchedule:
        """Build from a diffusers flow scheduler config (``FlowMatchEulerDiscreteScheduler``: ``shift``;
        ``UniPCMultistepScheduler``: ``flow_shift``); a setting this schedule cannot honour is refused
        in one line instead of being ignored. ``shift``: an explicit override (``model.shift``)."""
        for key, what in cls.UNSUPPORTED.items():
            if config.get(key) and not (key == "use_dynamic_shifting" and shift is not None):
                raise ConfigError(
                    f"the teacher's scheduler sets {key}={config[key]} ({what}); avdm's flow schedule is the "
                    "plain shifted one (sigma = s t / (1 + (s - 1) t))"
                )
        if shift is None:
            shift = next(
                (float(config[k]) for k in ("flow_shift", "shift") if config.get(k) is not None), 1.0
            )
        return cls(shift=shift, num_train_timesteps=int(config.get("num_train_timesteps", 1000)))

    def shift_t(self, u: Tensor) -> Tensor:
        s = self.shift
        return s * u / (1 + (s - 1) * u)

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t.float()

    def sigma(self, t: Tensor) -> Tensor:
        return t.float()

    def timestep(self, t: Tensor) -> Tensor:
        return t.float() * self.num_train_timesteps

    def t_from_timestep(self, timestep: Tensor | float) -> Tensor:
        return torch.as_tensor(timestep, dtype=torch.float32) / self.num_train_timesteps
