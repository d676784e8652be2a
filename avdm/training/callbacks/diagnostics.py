"""Collapse diagnostics during training, logged under ``diag/`` (:class:`CollapseDiagnostics`).

Every ``every_n_steps`` generator steps the generator samples fixed prompts from fixed noise, several
noises per prompt, without a graph; :func:`avdm.metrics.collapse.collapse_statistics` of the latents
(``diag/latent/*``) and, where the run has a VAE, of the decoded pixels (``diag/pixel/*``) are logged
beside the teacher's from the same noise (``diag/teacher/...``, sampled once), their ratio
(``diag/ratio/...``: 1 = as the teacher) and, for saturation, the excess over the teacher's fraction
(``diag/excess/pixel/saturation``). Also logged:

* ``diag/grad_share/<term>``: each loss term's share of the generator's gradient at its sample ``x0``,
  ``|d (lambda_i L_i) / d x0|`` over the sum of those norms, on the current batch (a term that does not
  act through ``x0``, such as a regression on the generator's own inputs, is left out);
* ``diag/critic/<name>/logit_gap`` (``D(real) - D(fake)``) and ``diag/critic/<name>/fake_score_loss``,
  the critics' values of the step, under the same heading.

All of it runs under ``torch.random.fork_rng``: training draws the same numbers with or without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor

from avdm.config_schema import Range, check_parameters
from avdm.metrics.collapse import collapse_statistics
from avdm.models.sampling import latents_for_prompts, teacher_sampler
from avdm.models.vae import decode_latents

DEFAULT_PROMPTS = ("a red ball moving left", "a blue box moving up")


def term_gradient_norms(terms: Mapping[str, Tensor], x0: Tensor) -> dict[str, float]:
    """``|d term / d x0|`` of each (weighted) loss term; terms whose graph does not reach ``x0`` are left
    out. ``x0`` must require grad; each term's graph is freed after its gradient."""
    norms = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        (grad,) = torch.autograd.grad(term, x0, allow_unused=True)
        if grad is not None:
            norms[name] = float(grad.float().norm())
    return norms


class CollapseDiagnostics(L.Callback):
    """Log the ``diag/`` values (module docstring) every ``every_n_steps`` generator steps.

    Args:
        every_n_steps: generator steps between checks (also the first batch: the starting point).
        prompts: the prompts sampled (fixed, as the noise).
        samples_per_prompt: noises per prompt (>= 2: diversity compares them).
        seed: seed of the fixed noise.
        num_steps: generator steps to sample with (``None``: the full ladder).
        teacher_steps: the teacher's sampler steps (``None``: its reference sampler's: DDIM 25, flow
            Euler 50).
        teacher_guidance: the teacher's CFG scale.
        gradient_shares: log ``diag/grad_share/*`` (one extra forward and backward per loss term).

    ``history`` holds every check as ``{"step": N, "diag/...": value}``; ``latest`` the last one.
    """

    #: Every check is a sample of its own: 0 (``SampleVideos``: only at the end) has no meaning here.
    PARAM_RANGES: ClassVar[dict[str, Range]] = {"every_n_steps": Range(1.0)}

    def __init__(
        self,
        every_n_steps: int = 100,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        samples_per_prompt: int = 4,
        seed: int = 0,
        num_steps: int | None = None,
        teacher_steps: int | None = None,
        teacher_guidance: float = 4.0,
        gradient_shares: bool = True,
    ) -> None:
        check_parameters(
            self,
            "callbacks.diagnostics",
            every_n_steps=every_n_steps,
            num_steps=num_steps,
            teacher_steps=teacher_steps,
            teacher_guidance=teacher_guidance,
        )
        if not prompts:
            raise ValueError("callbacks.diagnostics.prompts must not be empty")
        if (
            isinstance(samples_per_prompt, bool)
            or not isinstance(samples_per_prompt, int)
            or samples_per_prompt < 2
        ):
            raise ValueError(
                f"callbacks.diagnostics.samples_per_prompt={samples_per_prompt!r}: expected an integer >= 2 "
                "(diversity compares samples of one prompt)"
            )
        self.every_n_steps, self.prompts = every_n_steps, list(prompts)
        self.samples_per_prompt, self.seed, self.num_steps = samples_per_prompt, seed, num_steps
        self.teacher_steps, self.teacher_guidance = teacher_steps, teacher_guidance
        self.gradient_shares = gradient_shares
        self.history: list[dict[str, float]] = []
        self.teacher: dict[str, float] | None = None
        self._last_step = -1

    @property
    def latest(self) -> dict[str, float] | None:
        return self.history[-1] if self.history else None

    # --- what is sampled -------------------------------------------------------------------------
    def _prompts(self) -> list[str]:
        return [p for p in self.prompts for _ in range(self.samples_per_prompt)]  # prompt-major

    def _statistics(self, module: Any, latents: Tensor, prefix: str) -> dict[str, float]:
        n = self.samples_per_prompt
        stats = {f"{prefix}latent/{k}": v for k, v in collapse_statistics(latents, n, pixels=False).items()}
        if module.vae is not None:
            pixels = decode_latents(module.vae, latents)
            stats |= {f"{prefix}pixel/{k}": v for k, v in collapse_statistics(pixels, n, pixels=True).items()}
        return stats

    @torch.no_grad()
    def teacher_statistics(self, module: Any) -> dict[str, float]:
        """The teacher's statistics from the same noise and prompts (computed once)."""
        if self.teacher is None:
            family = module.family
            steps = self.teacher_steps or family.reference_steps
            sampler = teacher_sampler(
                module.teachers.video,
                module.scheduler_config,
                family.reference_sampler,
                steps,
                self.teacher_guidance,
            )
            latents = latents_for_prompts(
                sampler,
                module.prompt_encoder,
                self._prompts(),
                module.latent_shape,
                self.seed,
                guided=self.teacher_guidance != 1.0,
                device=module.device,
            )
            self.teacher = self._statistics(module, latents, "")
        return self.teacher

    @torch.no_grad()
    def generator_statistics(self, module: Any) -> dict[str, float]:
        """The generator's statistics (its EMA when kept) and their ratio to the teacher's."""
        latents = module.sample(self._prompts(), self.seed, self.num_steps)
        ours = self._statistics(module, latents, "")
        teacher = self.teacher_statistics(module)
        values = {f"diag/{k}": v for k, v in ours.items()}
        values |= {f"diag/teacher/{k}": v for k, v in teacher.items()}
        for key in ("diversity", "temporal_change", "flicker", "contrast", "colourfulness"):
            for space in ("latent", "pixel"):
                name = f"{space}/{key}"
                if name in ours and teacher.get(name, 0.0) > 0:
                    values[f"diag/ratio/{name}"] = ours[name] / teacher[name]
        if (
            "pixel/saturation" in ours
        ):  # dark or white backgrounds sit at the limits: judged beyond the teacher's
            values["diag/excess/pixel/saturation"] = ours["pixel/saturation"] - teacher["pixel/saturation"]
        return values

    def gradient_share(self, module: Any, batch: Mapping[str, Any]) -> dict[str, float]:
        """``diag/grad_norm_x0/<term>`` and ``diag/grad_share/<term>`` on ``batch``."""
        batch = module.with_latents(batch)
        text, uncond = module.encode_text(batch)
        rng = torch.Generator().manual_seed(self.seed + 1)
        z = torch.randn((text.shape[0], *module.latent_shape), generator=rng).to(module.device)
        with torch.no_grad():
            x0 = module.generator.sample(z, text, generator=rng)
        x0 = x0.detach().requires_grad_(True)
        _, terms = module.generator_terms(module.step_context(x0, text, uncond, batch))
        norms = term_gradient_norms(terms, x0)
        total = sum(norms.values())
        values = {f"diag/grad_norm_x0/{k}": v for k, v in norms.items()}
        if total > 0:
            values |= {f"diag/grad_share/{k}": v / total for k, v in norms.items()}
        return values

    @staticmethod
    def critic_values(metrics: Mapping[str, Any], module: Any) -> dict[str, float]:
        """The step's critic values of each plugin under ``diag/critic/<name>/``."""
        values = {}
        for name, plugin in module.losses.items():
            real, fake = metrics.get(f"critic/{name}/logits_real"), metrics.get(f"critic/{name}/logits_fake")
            if real is not None and fake is not None:
                values[f"diag/critic/{name}/logit_gap"] = float(real) - float(fake)
            loss = metrics.get(f"critic/{name}/loss")
            if loss is not None and getattr(plugin, "fake_score", None) is not None:
                values[f"diag/critic/{name}/fake_score_loss"] = float(loss)
        return values

    # --- when ------------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(pl_module.generator_steps)
        if step == self._last_step or (self.history and step % self.every_n_steps):
            return
        self._last_step = step
        was_training = pl_module.training
        pl_module.eval()
        try:
            cuda = [pl_module.device.index or 0] if pl_module.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), trainer.strategy.precision_plugin.forward_context():
                values = self.generator_statistics(pl_module)
                if self.gradient_shares:
                    values |= self.gradient_share(pl_module, batch)
        finally:
            pl_module.train(was_training)
        values |= self.critic_values(trainer.callback_metrics, pl_module)
        self.history.append({"step": float(step), **values})
        # Straight to the loggers, once: a value self.log'ged in a hook is repeated in every later row.
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({**values, "step/generator": float(step)}, step=trainer.global_step)

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` keeps: the last check's values, the teacher's, and the check's step."""
        if self.latest is None:
            return {}
        values = {k: v for k, v in self.latest.items() if k != "step"}
        return {**values, "diag/step": int(self.latest["step"])}
