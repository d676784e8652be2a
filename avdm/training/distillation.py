"""DistillationModule: drives a generator and any set of loss plugins with manual optimization.

One training batch is one *iteration*. Every iteration updates the critics of all plugins (fake
scores, discriminator heads) once; every ``critic_steps_per_generator_step``-th iteration first
updates the generator (AVDM2's two-timescale rule, DMD2's schedule). The generator optimizer's
steps are the only ones that advance ``trainer.global_step``, so ``trainer.max_steps``, warm-up,
logging and checkpoint intervals all count generator steps.

Randomness (noise, the backward-simulation step, plugin draws) is re-seeded at every iteration from
``(seed, iteration, rank)``, so a resumed run repeats exactly what an uninterrupted one does; the
backward-simulation index ``k`` uses no rank, so all DDP ranks run the same number of passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from avdm.config_schema import check_parameters
from avdm.errors import ConfigError
from avdm.losses.base import DistillationLoss, LossOutput, StepContext, TeacherBank
from avdm.models.bundle import ModelBundle
from avdm.models.execution import enable_gradient_checkpointing, to_channels_last
from avdm.models.generator import FewStepGenerator, draw_simulation_step
from avdm.models.lora import AdapterDenoiser, merged_network
from avdm.models.sampling import latents_for_prompts, student_sampler
from avdm.models.vae import encode_pixels
from avdm.training.callbacks.data_counts import BadVideoCounts
from avdm.training.checkpointing.trainable_state import frozen_keys, trainable_keys
from avdm.training.optim import adamw, linear_warmup, param_groups_by_pattern
from avdm.training.roles import build_student, cast_frozen, freeze_all, frozen_for_critics, generator_ema
from avdm.training.sharding import (
    ShardingSettings,
    is_sharded,
    replicated_trainable,
    reshard_all,
    shard_roles,
)
from avdm.training.update import check_finite, update_role


class DistillationModule(L.LightningModule):
    """Few-step video distillation with pluggable objectives.

    Args:
        models: the teacher family (teachers, prompt encoder, VAE); the generator starts as a
            trainable copy of ``models.video_teacher``.
        losses: named plugins, e.g. ``{"sdm": FrameSDMLoss(...), "gan": DenoisingGANLoss(...)}``.
        generator_timesteps: the generator's sampling ladder in the teacher's timestep units.
        generator_renoise: ``fresh`` or ``deterministic`` re-noising between generator steps.
        backward_simulation: train on a random step of the ladder (True) or only the first (False).
        critic_steps_per_generator_step: critic updates per generator update (paper: 2).
        generator_param_groups: ``[{pattern, lr, ...}]`` by parameter name, first match wins
            (paper: motion modules 2e-5, the spatial UNet 4e-6).
        critic_lr: learning rate of every plugin critic (paper: 2e-5).
        betas, weight_decay: AdamW settings of all optimizers.
        warmup_steps: linear LR warm-up of every optimizer, in generator steps (paper: 500).
        grad_clip_norm: max gradient norm per update (``None``: no clipping).
        max_consecutive_nonfinite: stop after this many iterations in a row whose loss is NaN/inf.
        seed: base seed of the per-iteration randomness.
        ema_decay: EMA of the generator with this decay (``None``: off, as in the paper; with LoRA roles an
            EMA adapter); sampling callbacks and export use it when present.
        gradient_checkpointing: recompute activations inside every block in the backward pass (about one
            more forward; losses unchanged; LoRA roles recompute under their own adapter).
        channels_last: keep 4-D weights in channels-last layout; loss values are unchanged.
        generator_lora: ``{rank, alpha, target_modules}``: the generator is the frozen video teacher plus a
            ``generator`` LoRA adapter (:mod:`avdm.models.lora`) instead of a full trainable copy; ``None``:
            the full copy (the paper's setting).
        sharding: ``{param_dtype, reduce_dtype, reshard_after_forward}`` of FSDP2
            (:mod:`~avdm.training.sharding`), used under ``ModelParallelStrategy`` (``trainer=fsdp2``);
            ignored by other strategies.
    """

    def __init__(
        self,
        models: ModelBundle,
        losses: Mapping[str, DistillationLoss],
        generator_timesteps: Sequence[float] = (999, 749, 499, 249),
        generator_renoise: str = "fresh",
        backward_simulation: bool = True,
        critic_steps_per_generator_step: int = 2,
        generator_param_groups: Sequence[Mapping[str, Any]] = ({"pattern": ".*", "lr": 2e-5},),
        critic_lr: float = 2e-5,
        betas: Sequence[float] = (0.9, 0.999),
        weight_decay: float = 0.01,
        warmup_steps: int = 500,
        grad_clip_norm: float | None = 1.0,
        max_consecutive_nonfinite: int = 10,
        seed: int = 0,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        generator_lora: Mapping[str, Any] | None = None,
        sharding: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not losses:
            raise ConfigError("loss: at least one loss plugin is required")
        check_parameters(self, "module", critic_lr=critic_lr, betas=betas, weight_decay=weight_decay)
        check_parameters(
            self, "module", warmup_steps=warmup_steps, grad_clip_norm=grad_clip_norm, ema_decay=ema_decay
        )
        check_parameters(self, "module", critic_steps_per_generator_step=critic_steps_per_generator_step)
        check_parameters(self, "module", max_consecutive_nonfinite=max_consecutive_nonfinite)
        self.automatic_optimization = False
        self.teachers = TeacherBank(models.video_teacher, models.image_teacher)
        self.prompt_encoder, self.vae = models.prompt_encoder, models.vae
        freeze_all(*self._frozen_roles())
        student = build_student(models.video_teacher, generator_lora)
        self.generator = FewStepGenerator(student, generator_timesteps, generator_renoise)
        self.generator_ema = generator_ema(self.generator, ema_decay, generator_lora)
        self.losses = nn.ModuleDict(dict(losses))
        self.needs_sample = any(plugin.needs_generator_sample for plugin in self.losses.values())
        self._bind_plugins()
        # After every trainable copy is made (generator above, fake scores in bind): they keep float32.
        self.teacher_dtype = models.teacher_dtype
        cast_frozen(self, self._frozen_roles(), self.teacher_dtype)
        if gradient_checkpointing:
            enable_gradient_checkpointing(self)
        if channels_last:
            to_channels_last(self)
        self.latent_shape = tuple(models.latent_shape)
        self.sources = dict(models.sources)
        self.family = models.family
        self.scheduler_config = dict(models.scheduler_config)
        self.backward_simulation = backward_simulation
        self.critic_every = critic_steps_per_generator_step
        if self.critic_every > 1 and not self.critic_plugins:
            # Without a critic, the iterations between generator updates would only consume batches.
            rank_zero_warn(
                f"module.critic_steps_per_generator_step={self.critic_every} but no loss plugin has a critic "
                f"(loss: {', '.join(self.losses)}): every batch updates the generator",
                stacklevel=2,
            )
            self.critic_every = 1
        self.generator_param_groups = [dict(g) for g in generator_param_groups]
        self.critic_lr, self.betas, self.weight_decay = critic_lr, tuple(betas), weight_decay
        self.warmup_steps, self.grad_clip_norm = warmup_steps, grad_clip_norm
        self.max_consecutive_nonfinite, self.seed = max_consecutive_nonfinite, seed
        # Counters live in buffers so that they are saved in, and restored from, checkpoints.
        for name in (
            "iterations",
            "generator_steps",
            "critic_steps",
            "nonfinite_skips",
            "consecutive_nonfinite",
        ):
            self.register_buffer(name, torch.zeros((), dtype=torch.long))
        self._uncond_cache: Tensor | None = None
        self.sharding = ShardingSettings.from_config(sharding)
        self._sharded = False  # set by configure_model under FSDP2
        self._replicated: list[nn.Parameter] = []  # trainable weights FSDP2 does not hold (heads)

    def _frozen_roles(self) -> tuple[nn.Module | None, ...]:
        return (self.teachers, self.prompt_encoder, self.vae)

    def _bind_plugins(self) -> None:
        """Give every plugin the frozen teachers (it makes its fake score, finds its feature layers)."""
        for name, plugin in self.losses.items():
            try:
                plugin.bind(self.teachers)
            except ConfigError as err:  # the plugin names its own key; the run config has it under loss.NAME
                raise ConfigError(f"loss.{name}.{err}") from None

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (``trainer=fsdp2``): FSDP2 over every role; else nothing."""
        mesh = self.device_mesh
        if mesh is None or is_sharded(self):
            return
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        if precision.startswith("16"):
            raise ConfigError(
                f"trainer.precision={precision} cannot be combined with trainer=fsdp2 (its gradient scaler "
                "does not see sharded gradients); use module.sharding.param_dtype=bfloat16 with 32-true"
            )
        shard_roles(self, mesh["data_parallel"], self.sharding)
        self._sharded = True
        self._replicated = replicated_trainable(self)
        self.strict_loading = False  # checkpoints hold no frozen weights; checked before the fit (fit.py)

    def train(self, mode: bool = True) -> DistillationModule:
        """Lightning puts the module in train mode at fit start; frozen models stay in eval."""
        super().train(mode)
        for frozen in self._frozen_roles():
            if frozen is not None:
                frozen.eval()
        return self

    # --- optimizers ------------------------------------------------------------------------
    @property
    def critic_plugins(self) -> list[str]:
        return [name for name, plugin in self.losses.items() if plugin.has_critic]

    def generator_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The generator's own trainable parameters: its adapter's with ``generator_lora``, else all."""
        denoiser = self.generator.denoiser
        if isinstance(denoiser, AdapterDenoiser):
            return list(denoiser.trainable_parameters())
        return [(n, p) for n, p in self.generator.named_parameters() if p.requires_grad]

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """The generator's AdamW (groups by name pattern) and one AdamW per critic plugin, in the order of
        :attr:`optimizer_names`, each with linear warm-up."""
        groups = param_groups_by_pattern(
            self.generator_named_parameters(), self.generator_param_groups, "module.generator_param_groups"
        )
        optimizers = [adamw(groups, lr=groups[0]["lr"], betas=self.betas, weight_decay=self.weight_decay)]
        for name in self.critic_plugins:
            params = list(self.losses[name].critic_parameters())
            optimizers.append(
                adamw(params, lr=self.critic_lr, betas=self.betas, weight_decay=self.weight_decay)
            )
        # Warm-up lengths are in generator steps: critics step critic_every times per generator step.
        lengths = [self.warmup_steps] + [self.warmup_steps * self.critic_every] * (len(optimizers) - 1)
        schedulers = [
            {"scheduler": linear_warmup(opt, n), "interval": "step"} for opt, n in zip(optimizers, lengths)
        ]
        return optimizers, schedulers

    @property
    def optimizer_names(self) -> list[str]:
        """``generator`` and the critic plugins' names, in the order of :meth:`configure_optimizers`."""
        return ["generator", *self.critic_plugins]

    def _optimizers(self) -> dict[str, tuple[Any, Any]]:
        """Lightning's (optimizer, LR scheduler) pairs by name (:attr:`optimizer_names`)."""
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        return dict(zip(self.optimizer_names, zip(optimizers, schedulers)))

    # --- conditioning ------------------------------------------------------------------------
    def with_latents(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The batch with ``latents``: pixel clips ``(B, 3, F, H, W)`` are encoded with the teacher's VAE."""
        if "latents" in batch:
            shape = tuple(batch["latents"].shape[1:])
            if shape != self.latent_shape:
                raise ConfigError(
                    f"data: latents of shape {list(shape)} do not fit the model, whose latents are "
                    f"{list(self.latent_shape)} (model.num_frames / model.resolution, or the data's "
                    "latent_shape)"
                )
            return batch
        if "pixels" not in batch:
            return batch
        if self.vae is None:
            raise ConfigError("data: the batch holds pixels but the model has no VAE to encode them")
        return {**batch, "latents": encode_pixels(self.vae, batch["pixels"])}

    def encode_text(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Text embeddings of the batch's captions ``(B, L, D)`` and of the empty prompt."""
        text = batch["text"] if "text" in batch else self.prompt_encoder(list(batch["captions"]))
        if self._uncond_cache is None or self._uncond_cache.device != text.device:
            self._uncond_cache = self.prompt_encoder([""]).to(text.device)
        return text, self._uncond_cache.expand(text.shape[0], -1, -1)

    # --- the iteration ---------------------------------------------------------------------------
    def simulation_step(self, iteration: int) -> int:
        """Backward-simulation index ``k`` of ``iteration``: the same on every rank, 0 when off."""
        if not self.backward_simulation:
            return 0
        shared = torch.Generator().manual_seed(self.seed * 1_000_003 + iteration)
        return draw_simulation_step(self.generator.num_steps, shared)

    def updates_generator(self, iteration: int) -> bool:
        """Whether ``iteration`` updates the generator (every ``critic_steps_per_generator_step``-th)."""
        return iteration % self.critic_every == self.critic_every - 1

    def _seed_iteration(self) -> int:
        """Seeds this iteration's global RNG (per rank) and returns its ``k``."""
        it = int(self.iterations)
        torch.manual_seed(self.seed * 1_000_003 + it * 7_919 + self.global_rank)
        return self.simulation_step(it)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """One iteration of AVDM2's Algorithm 1: a generator phase every ``critic_steps_per_generator_step``
        iterations, then a critic phase, both on the same noise ``z`` and backward-simulation step ``k``."""
        if self._sharded:  # callbacks may have sampled between iterations (sharding.reshard_all)
            reshard_all(self)
        k = self._seed_iteration()
        batch = self.with_latents(batch)
        text, uncond = self.encode_text(batch)
        z = torch.randn((text.shape[0], *self.latent_shape), device=self.device)
        # Collected and logged once: every self.log call costs ~0.5 ms of Lightning bookkeeping.
        logs: dict[str, Tensor | float] = {}
        x0_fake = None
        if self.updates_generator(int(self.iterations)):
            x0_fake = self.generator_phase(z, text, uncond, batch, k, logs)
        if self.critic_plugins:
            self.critic_phase(z, text, uncond, batch, k, x0_fake, logs)
        self.iterations += 1
        logs["step/generator"] = self.generator_steps.float()
        logs["step/critic"] = self.critic_steps.float()
        logs.update({f"lr/{name}": sched.get_last_lr()[0] for name, (_, sched) in self._optimizers().items()})
        self.log_dict(logs, batch_size=text.shape[0])

    def step_context(
        self, x0_fake: Tensor | None, text: Tensor, uncond: Tensor, batch: Mapping[str, Any]
    ) -> StepContext:
        """What the plugins get for ``x0_fake`` and the batch (also used by the diagnostics)."""
        return StepContext(
            x0_fake, text, batch, self.teachers, self.generator, uncond, int(self.generator_steps)
        )

    def generator_terms(self, ctx: StepContext) -> tuple[dict[str, LossOutput], dict[str, Tensor]]:
        """Each plugin's generator loss on ``ctx`` and its weighted term ``lambda_i L_i``; the generator's
        loss is the sum of the terms (Algorithm 1, step 3), and the diagnostics' gradient shares split it."""
        outputs = {name: plugin.generator_loss(ctx) for name, plugin in self.losses.items()}
        return outputs, {name: self.losses[name].weight * out.loss for name, out in outputs.items()}

    def generator_phase(
        self, z: Tensor, text: Tensor, uncond: Tensor, batch: Mapping[str, Any], k: int, logs: dict[str, Any]
    ) -> Tensor | None:
        """Algorithm 1, steps 1-4: update G_theta on ``sum_i lambda_i L_i``; returns the detached sample.

        Backward simulation gives ``x0_fake`` from step ``k`` of the ladder; each plugin's
        ``after_generator_step`` runs after a taken update (an EMA target, for instance).
        """
        optimizer, scheduler = self._optimizers()["generator"]
        with self.toggled_optimizer(optimizer):
            x0_fake = self.generator.simulate(z, text, k).x0 if self.needs_sample else None
            ctx = self.step_context(x0_fake, text, uncond, batch)
            outputs, weighted = self.generator_terms(ctx)
            # What is backpropagated is the weighted total: judged itself, with each term named.
            total = sum(weighted.values())
            terms = {f"loss term {n}": o.loss for n, o in outputs.items()}
            terms["weighted total"] = total
            stepped = check_finite(self, terms, "gen")
            if stepped:
                stepped, grad_norm = update_role(
                    self, optimizer, scheduler, total, counted=True, role="generator"
                )
            if stepped:
                self.generator_steps += 1
                if self.generator_ema is not None:
                    self.generator_ema.update_parameters(self.generator)
                for plugin in self.losses.values():
                    plugin.after_generator_step(ctx)
                self.consecutive_nonfinite.zero_()
                self.log("gen/loss", total.detach(), prog_bar=True, batch_size=text.shape[0])
                for name, out in outputs.items():
                    logs.update({f"gen/{name}/{key}": v for key, v in out.logs.items()})
                logs["gen/backward_simulation_k"] = float(k)
                if grad_norm is not None:
                    logs["grad_norm/generator"] = grad_norm
        return None if x0_fake is None else x0_fake.detach()

    def critic_phase(
        self,
        z: Tensor,
        text: Tensor,
        uncond: Tensor,
        batch: Mapping[str, Any],
        k: int,
        x0_fake: Tensor | None,
        logs: dict[str, Any],
    ) -> None:
        """Algorithm 1, steps 5-6: update each plugin's critic (fake score eq. 2, discriminator head eq. 6)
        on the detached sample, simulated here without gradient when this iteration had no generator phase."""
        if x0_fake is None and self.needs_sample:
            with torch.no_grad():
                x0_fake = self.generator.simulate(z, text, k).x0
        ctx = self.step_context(x0_fake, text, uncond, batch)
        optimizers = self._optimizers()
        stepped = False
        # One critic at a time: each graph is freed by its backward before the next is built.
        with frozen_for_critics([p for _, p in self.generator_named_parameters()]):
            for name in self.critic_plugins:
                out = self.losses[name].critic_loss(ctx)
                if not check_finite(self, {f"loss of {name}": out.loss}, "critic"):
                    continue
                optimizer, scheduler = optimizers[name]
                taken, grad_norm = update_role(
                    self, optimizer, scheduler, out.loss, counted=False, role=f"{name} critic"
                )
                if taken:
                    logs.update({f"critic/{name}/{key}": v for key, v in out.logs.items()})
                    if grad_norm is not None:
                        logs[f"grad_norm/{name}"] = grad_norm
                    stepped = True
        if stepped:
            self.critic_steps += 1

    def configure_callbacks(self) -> list[L.Callback]:
        """The data module's bad-video counts reach the logs (:class:`~.data_counts.BadVideoCounts`)."""
        return [BadVideoCounts()]

    # --- sampling --------------------------------------------------------------------------------
    def sampling_generator(self, use_ema: bool = True) -> FewStepGenerator:
        """The generator to sample or export: its EMA when one is kept and ``use_ema``, else the raw one."""
        if use_ema and self.generator_ema is not None:
            return self.generator_ema.module
        return self.generator

    @torch.no_grad()
    def sample(
        self, prompts: Sequence[str], seed: int = 0, num_steps: int | None = None, use_ema: bool = True
    ) -> Tensor:
        """Latents ``(B, C, F, H, W)`` of the few-step generator (its EMA when kept) for ``prompts``
        (:func:`~avdm.models.sampling.latents_for_prompts`)."""
        sampler = student_sampler(self.sampling_generator(use_ema), num_steps)
        return latents_for_prompts(
            sampler, self.prompt_encoder, prompts, self.latent_shape, seed, device=self.device
        )

    def pipeline_parts(self) -> dict[str, Any]:
        """The generator (its EMA when kept) as a teacher pipeline, for
        :func:`~avdm.export.export_teacher` (stages of training a teacher with
        :class:`~avdm.losses.DenoisingLoss`)."""
        denoiser = self.sampling_generator().denoiser
        return {
            "family": self.family,
            "model": merged_network(denoiser),
            "vae": self.vae,
            "prompt_encoder": self.prompt_encoder,
            "scheduler_config": self.scheduler_config,
            "info": {
                "stage": "denoising",
                "generator_steps": int(self.generator_steps),
                "weights": "ema" if self.generator_ema is not None else "generator",
                "position_channels": list(getattr(denoiser, "position", ())),
                "sources": self.sources,
            },
        }

    # --- checkpoints: trainable weights only, plus where the frozen teachers came from ---------------
    def checkpoint_keys(self) -> set[str]:
        """The state-dict keys a checkpoint holds: every key but the frozen roles' (and their aliases)."""
        return trainable_keys(self.state_dict())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        # By name from the module itself: a gathered or offloaded state dict holds copies, not aliases.
        keep = self.checkpoint_keys()
        for key in [k for k in state if k not in keep]:
            del state[key]
        checkpoint["avdm_teacher_sources"] = self.sources

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" not in checkpoint:
            return  # a sharded checkpoint: the strategy has loaded the weights (sharded_strategy.py)
        for name, plugin in self.losses.items():  # keys of older plugin versions, before the key check
            plugin.rename_legacy_keys(checkpoint["state_dict"], f"losses.{name}.")
        own = self.state_dict()
        checkpoint["state_dict"].update({k: own[k] for k in frozen_keys(own)})
