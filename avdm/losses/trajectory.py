"""AccVideo's objectives on SynVid trajectories: trajectory regression and the timestep-aware GAN.

Batch keys (from a SynVid loader):

* ``trajectory``: the teacher's key points ``(B, N, C, F, H, W)``, N >= 2, from noise to data
  (``trajectory[:, 0]`` is the starting noise at the highest time, ``trajectory[:, -1]`` the last point);
* ``trajectory_t``: their normalized times ``(B, N)`` or ``(N,)``, strictly decreasing, in ``[0, 1]``
  (the generator schedule's normalized time, ``schedule.t_from_timestep`` of the teacher's timesteps).

``ctx.text`` must hold the embeddings of the trajectories' prompts. The student is ``ctx.generator.denoiser``;
for inference its ladder (``FewStepGenerator.timesteps``) should be the key-point times.

Per sample a key index ``k ~ U{0 .. N-2}`` is drawn; the student predicts at ``(x_{t_k}, t_k)`` and takes
the deterministic step (DDIM eta = 0 / Euler) to the target time: ``t_{k+1}`` (``target: next``, AccVideo) or
the last key point (``target: final``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from avdm.config_schema import check_parameters
from avdm.losses.base import DistillationLoss, LossOutput, StepContext
from avdm.losses.functional import DISTANCES, check_choice, regression_distance
from avdm.losses.gan import FeatureGANLoss
from avdm.models.denoiser import Denoiser
from avdm.models.sampler_steps import deterministic_step

TARGETS = ("next", "final")


class KeyPoints(NamedTuple):
    """One draw of trajectory segments.

    Attributes:
        x_src, t_src: the student's input ``(B, C, F, H, W)`` and its time ``(B,)``.
        x_tgt, t_tgt: the teacher's key point to land on ``(B, C, F, H, W)`` and its time ``(B,)``.
    """

    x_src: Tensor
    t_src: Tensor
    x_tgt: Tensor
    t_tgt: Tensor


def draw_key_points(batch: Mapping[str, Any], target: str = "next") -> KeyPoints:
    """Pick ``k ~ U{0 .. N-2}`` per sample from ``batch["trajectory"]``, ``batch["trajectory_t"]``."""
    traj, times = batch["trajectory"], batch["trajectory_t"]
    if traj.ndim != 6 or traj.shape[1] < 2:
        raise ValueError(
            f"batch['trajectory'] must be (B, N, C, F, H, W) with N >= 2 key points, got {tuple(traj.shape)}"
        )
    b, n = traj.shape[:2]
    times = torch.as_tensor(times, device=traj.device, dtype=torch.float32)
    if times.shape not in ((b, n), (n,)):
        raise ValueError(f"batch['trajectory_t'] must be (B, N) = {(b, n)} or (N,), got {tuple(times.shape)}")
    if times.min() < 0 or times.max() > 1 or not bool((times[..., 1:] < times[..., :-1]).all()):
        raise ValueError(
            "batch['trajectory_t'] must be normalized times in [0, 1], strictly decreasing "
            "along the trajectory (noise -> data)"
        )
    times = times.expand(b, n)
    rows = torch.arange(b, device=traj.device)
    k = torch.randint(n - 1, (b,), device=traj.device)
    k_tgt = k + 1 if target == "next" else torch.full_like(k, n - 1)
    return KeyPoints(traj[rows, k], times[rows, k], traj[rows, k_tgt], times[rows, k_tgt])


def student_step(student: Denoiser, x_src: Tensor, t_src: Tensor, t_tgt: Tensor, text: Tensor) -> Tensor:
    """The student's estimate of the key point at ``t_tgt``: ``alpha_{t'} x0_hat + sigma_{t'} eps_hat``."""
    return deterministic_step(student.schedule, student(x_src, t_src, text), x_src, t_src, t_tgt)


class TrajectoryRegressionLoss(DistillationLoss):
    """AccVideo's trajectory-based few-step guidance: from ``x_{t_k}`` land on the teacher's ``x_{t_{k+1}}``.

    Loss: ``d(student_step(x_{t_k}), x_{t_{k+1}})`` with ``d`` = per-sample ``mse`` or ``pseudo_huber``
    (:func:`~avdm.losses.functional.regression_distance`). No critic.

    Args:
        weight: lambda of this term.
        distance: ``mse`` or ``pseudo_huber``.
        huber_c: ``c`` of the pseudo-Huber distance, in per-element RMS units (> 0).
        target: ``next`` (the following key point) or ``final`` (the trajectory's last point).
    """

    needs_generator_sample = False

    def __init__(
        self, weight: float = 1.0, distance: str = "mse", huber_c: float = 1e-3, target: str = "next"
    ) -> None:
        super().__init__(weight)
        check_choice("distance", distance, DISTANCES)
        check_choice("target", target, TARGETS)
        check_parameters(self, huber_c=huber_c)
        self.distance, self.huber_c, self.target = distance, float(huber_c), target

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        kp = draw_key_points(ctx.batch, self.target)
        x_hat = student_step(ctx.generator.denoiser, kp.x_src, kp.t_src, kp.t_tgt, ctx.text)
        loss = regression_distance(x_hat, kp.x_tgt, self.distance, self.huber_c)
        return LossOutput(loss, {"loss": loss.detach()})


class TrajectoryGANLoss(FeatureGANLoss):
    """AccVideo's timestep-aware adversarial term on SynVid key points.

    Discriminator: features of the frozen ``teachers.video`` at ``feature_layers``, fed the key-point latent
    and its time ``t_{k+1}`` (no extra noise: SynVid holds the data distribution at every key time), plus a
    trainable :class:`~avdm.models.heads.MultiScaleDiscriminatorHead`. Real: ``x_{t_{k+1}}`` from SynVid;
    fake: the student's step from ``x_{t_k}`` (as in :class:`TrajectoryRegressionLoss`). Generator phase
    eq. 7, critic phase eq. 6 (real and fake batched).

    Args:
        weight: lambda of this term.
        target: ``next`` or ``final`` (see the module docstring).
        discriminator: ``loss_type``, ``feature_layers``, ``head_channels``, ``head_layers``,
            ``temporal_kernel``, ``probe_shape``, ``text_dim`` of :class:`~avdm.losses.gan.FeatureGANLoss`.
    """

    needs_generator_sample = False

    def __init__(self, weight: float = 1.0, target: str = "next", **discriminator: Any) -> None:
        super().__init__(weight, **discriminator)
        check_choice("target", target, TARGETS)
        self.target = target

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        kp = draw_key_points(ctx.batch, self.target)
        x_fake = student_step(ctx.generator.denoiser, kp.x_src, kp.t_src, kp.t_tgt, ctx.text)
        return self.adversarial_generator_loss(ctx.teachers.video, x_fake, kp.t_tgt, ctx.text)

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        kp = draw_key_points(ctx.batch, self.target)
        with torch.no_grad():
            x_fake = student_step(ctx.generator.denoiser, kp.x_src, kp.t_src, kp.t_tgt, ctx.text)
        teacher = ctx.teachers.video
        return self.adversarial_critic_loss(teacher, kp.x_tgt, x_fake, kp.t_tgt, kp.t_tgt, ctx.text)
