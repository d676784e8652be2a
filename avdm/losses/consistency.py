"""Consistency distillation (LCM, Luo et al. 2023, Algorithm 1; AnimateLCM and MCM apply it to video).

The student ``f_theta`` maps any point of the teacher's guided probability-flow ODE to its clean end. A
point is drawn by forward-noising a real clip; the teacher takes one solver step along its ODE, with
classifier-free guidance folded into that step, and the student's output at the start must agree with an
EMA copy of itself (the target network ``f_theta-``) one teacher step later:

* ``n ~ U{1 .. N}`` on the solver grid ``u_n = n / N`` (``t_n = shift(u_n)``, the schedule's own grid);
* ``x_{t_n} = alpha_{t_n} x0 + sigma_{t_n} eps``, ``x0`` a real clip (``ctx.batch["latents"]``);
* ``x^Phi_{t_{n-1}} = Psi(x_{t_n}, t_n, t_{n-1}; w)``: the teacher's DDIM (eta = 0) / Euler step on its
  CFG prediction ``uncond + w (cond - uncond)``;
* loss ``d(f_theta(x_{t_n}, t_n), f_theta-(x^Phi_{t_{n-1}}, t_{n-1}))``, with ``d`` the per-sample MSE or
  pseudo-Huber distance (:func:`~avdm.losses.functional.regression_distance`) and ``theta- <- mu theta- +
  (1 - mu) theta`` after every generator update (:meth:`ConsistencyDistillationLoss.after_generator_step`).

``f_theta`` is the student's ``x0`` prediction. LCM writes it as ``c_skip(t) x + c_out(t) x0_hat`` so that
``f(x, 0) = x``; here the boundary is imposed on the target instead (at ``t_{n-1} = 0`` the target is the
teacher's own ``x0`` estimate), so the student stays a plain denoiser that :class:`FewStepGenerator`
samples like any other (LCM's multistep sampling is its fresh re-noising between ladder steps).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import Tensor

from avdm.config_schema import Range, check_parameters
from avdm.losses.base import DistillationLoss, LossOutput, StepContext, TeacherBank
from avdm.losses.functional import DISTANCES, check_choice, regression_distance
from avdm.models.denoiser import Denoiser, freeze_
from avdm.models.sampler_steps import CFG_CONVENTIONS, deterministic_step, guided_prediction


class ConsistencyDistillationLoss(DistillationLoss):
    """LCM-style consistency distillation of the video teacher into the generator (no critic).

    Owns the EMA target network ``f_theta-``: a frozen copy of the video teacher made in :meth:`bind` (the
    generator starts from the same weights), moved toward the generator after every generator update and
    saved in checkpoints with the plugin.

    Args:
        weight: lambda of this term.
        num_solver_steps: ``N`` of the teacher's solver grid; one teacher step is ``1 / N`` of the time range
            (LCM: 50 DDIM steps of a 1000-step teacher, a skip of 20 timesteps).
        guidance_scale: CFG scale ``w`` of the teacher's step (``standard``: 1 = none; ``dmd2``: 0 = none).
        guidance_convention: ``standard`` or ``dmd2``
            (:func:`~avdm.models.sampler_steps.classifier_free_guidance`).
        ema_decay: ``mu`` of the target network (LCM: 0.95), in ``[0, 1)``; 0: the target is the online
            network itself (``theta- <- theta`` after every update, under stop-gradient).
        distance: ``mse`` or ``pseudo_huber`` (LCM: Huber).
        huber_c: ``c`` of the pseudo-Huber distance, per-element RMS units (> 0).
    """

    needs_generator_sample = False
    #: ``theta- <- mu theta- + (1 - mu) theta``: ``mu = 0`` copies the online weights (the target is the
    #: online network, as in consistency training without EMA); ``mu = 1`` would never move the target.
    #: The generator EMA of the module keeps ``RANGES["ema_decay"]``, ``(0, 1)``.
    PARAM_RANGES: ClassVar[dict[str, Range]] = {"ema_decay": Range(0.0, 1.0, open_high=True)}

    def __init__(
        self,
        weight: float = 1.0,
        num_solver_steps: int = 50,
        guidance_scale: float = 1.0,
        guidance_convention: str = "standard",
        ema_decay: float = 0.95,
        distance: str = "pseudo_huber",
        huber_c: float = 1e-3,
    ) -> None:
        super().__init__(weight)
        check_parameters(
            self,
            num_solver_steps=num_solver_steps,
            guidance_scale=guidance_scale,
            ema_decay=ema_decay,
            huber_c=huber_c,
        )
        check_choice("guidance_convention", guidance_convention, CFG_CONVENTIONS)
        check_choice("distance", distance, DISTANCES)
        self.num_solver_steps = num_solver_steps
        self.guidance_scale, self.guidance_convention = float(guidance_scale), guidance_convention
        self.ema_decay = float(ema_decay)
        self.distance, self.huber_c = distance, float(huber_c)
        self.target: Denoiser | None = None

    def bind(self, teachers: TeacherBank) -> None:
        """The target network ``f_theta-``: a frozen copy of the video teacher, as the generator starts."""
        self.target = copy.deepcopy(teachers.video)
        freeze_(self.target)

    def train(self, mode: bool = True) -> ConsistencyDistillationLoss:
        super().train(mode)
        if self.target is not None:
            self.target.eval()  # a target network, never trained directly
        return self

    def _target(self) -> Denoiser:
        if self.target is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(teachers) before computing losses")
        return self.target

    def solver_times(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``t_n`` and ``t_{n-1}`` ``(B,)`` for ``n ~ U{1 .. N}`` on the schedule's grid (``t_0 = 0``)."""
        n = torch.randint(1, self.num_solver_steps + 1, (batch_size,), device=device)
        return n / self.num_solver_steps, (n - 1) / self.num_solver_steps

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        if "latents" not in ctx.batch:
            raise ValueError("ConsistencyDistillationLoss needs real clips: batch['latents'] (B, C, F, H, W)")
        teacher, target, student = ctx.teachers.video, self._target(), ctx.generator.denoiser
        schedule = teacher.schedule
        x0 = ctx.batch["latents"].float()
        u_n, u_prev = self.solver_times(x0.shape[0], x0.device)
        t_n, t_prev = schedule.shift_t(u_n), schedule.shift_t(u_prev)
        x_n = schedule.add_noise(x0, torch.randn_like(x0), t_n)
        with torch.no_grad():
            pred = guided_prediction(
                teacher, x_n, t_n, ctx.text, ctx.uncond_text, self.guidance_scale, self.guidance_convention
            )
            x_prev = deterministic_step(schedule, pred, x_n, t_n, t_prev)
            at_boundary = (u_prev == 0).view(-1, *([1] * (x0.ndim - 1)))
            f_target = torch.where(
                at_boundary, schedule.to_x0(pred, x_n, t_n), target.x0(x_prev, t_prev, ctx.text)
            )
        f_student = student.x0(x_n, t_n, ctx.text)
        loss = regression_distance(f_student, f_target, self.distance, self.huber_c)
        return LossOutput(loss, {"loss": loss.detach(), "t_mean": t_n.mean()})

    @torch.no_grad()
    def after_generator_step(self, ctx: StepContext) -> None:
        """``theta- <- mu theta- + (1 - mu) theta`` over the generator's denoiser (buffers copied)."""
        target, online = self._target(), ctx.generator.denoiser
        for p_target, p_online in zip(target.parameters(), online.parameters(), strict=True):
            p_target.lerp_(p_online.detach().to(p_target.dtype), 1.0 - self.ema_decay)
        for b_target, b_online in zip(target.buffers(), online.buffers(), strict=True):
            b_target.copy_(b_online)
