"""Which networks run with a graph in each phase of a DistillationModule, and the activation peak.

Read from ``avdm/training/distillation.py`` and ``avdm/losses/``:

* generator phase (every graph lives until the one backward of the weighted total): the generator's sample
  at the backward-simulation step (the steps before it run without grad); the denoising GAN's and
  AccVideo's GAN's pass of the frozen video teacher up to the discriminator's deepest feature layer (the
  gradient flows through it into the sample); AccVideo's trajectory losses and LCM's each run the student
  once more with grad (their own inputs); SDM's real and fake scores run without grad (only the surrogate on
  ``x0`` keeps a graph, a few latent-sized tensors, left out);
* critic phase (one critic at a time, each graph freed by its backward): an SDM fake score on its ``K``
  frames (frame SDM: ``B x K`` images through the 2D view) or whole clips (video SDM); a GAN's teacher runs
  without grad and only its small head trains (left out).

The peak is the larger phase.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from avdm.training.memory.networks import Pass, network_pass


@dataclass(frozen=True)
class RunShape:
    """What sizes a pass: the batch per process, the latent ``(C, F, H, W)``, text tokens per clip, the
    activation element bytes of trainable and of frozen networks, and the execution settings."""

    batch: int
    latent: tuple[int, int, int, int]
    text: int
    e: int
    e_frozen: int
    checkpointing: bool
    attention: str
    generator_lora: int = 0  # rank, 0: a full copy
    fake_score_lora: int = 0


@dataclass(frozen=True)
class Network:
    """A pass to cost: its label, the network's diffusers config and the pass."""

    label: str
    config: Any
    shape: Pass
    last_stage: str | None = None

    @property
    def bytes(self) -> int:
        return network_pass(self.config, self.shape, self.last_stage)


def _pass(
    run: RunShape, trainable: bool, lora: int, frames: int | None = None, batch: int | None = None
) -> Pass:
    _, f, h, w = run.latent
    e = run.e if trainable or lora else run.e_frozen
    return Pass(batch=batch or run.batch, frames=frames or f, height=h, width=w, text=run.text, e=e,
                trainable=trainable, checkpointing=run.checkpointing, attention=run.attention,
                lora_rank=lora)  # fmt: skip


def generator_phase(module: nn.Module, run: RunShape) -> list[Network]:
    """The passes that keep a graph until the generator's backward."""
    config = module.generator.denoiser.model.config
    generator = Network("generator", config, _pass(run, run.generator_lora == 0, run.generator_lora))
    found = [generator] if module.needs_sample else []
    for name, plugin in module.losses.items():
        kind = type(plugin).__name__
        if kind in ("TrajectoryRegressionLoss", "TrajectoryGANLoss", "ConsistencyDistillationLoss",
                    "DenoisingLoss"):  # fmt: skip
            found.append(replace(generator, label=f"{name}: student"))
        discriminator = getattr(plugin, "discriminator", None)
        if discriminator is not None:
            teacher = module.teachers.video.model.config
            layers = list(discriminator.feature_layers)
            found.append(
                Network(f"{name}: teacher to {layers[-1]}", teacher, _pass(run, False, 0), layers[-1])
            )
    return found


def critic_phase(module: nn.Module, run: RunShape) -> list[Network]:
    """The critics' passes with a graph (the largest one is the phase's peak: they run one at a time)."""
    found = []
    for name, plugin in module.losses.items():
        fake = getattr(plugin, "fake_score", None)
        if fake is None:
            continue
        lora = run.fake_score_lora
        trainable = lora == 0
        frames = getattr(plugin, "num_frames", None)
        if getattr(plugin, "teacher_role", "video") == "image":  # B x K images through the 2D view
            k = frames or run.latent[1]
            found.append(Network(f"{name}: fake score", fake.model.config,
                                 _pass(run, trainable, lora, frames=1, batch=run.batch * k)))  # fmt: skip
        else:
            found.append(Network(f"{name}: fake score", fake.model.config, _pass(run, trainable, lora)))
    return found


@dataclass(frozen=True)
class ActivationPeak:
    """The activation peak and where it is."""

    bytes: int
    phase: str
    passes: tuple[tuple[str, int], ...]


def activation_peak(module: nn.Module, run: RunShape) -> ActivationPeak:
    """The larger of the generator phase (its passes summed) and the critic phase (its largest pass)."""
    gen = [(n.label, n.bytes) for n in generator_phase(module, run)]
    critic = [(n.label, n.bytes) for n in critic_phase(module, run)]
    gen_total = sum(b for _, b in gen)
    critic_top = max(critic, key=lambda lb: lb[1], default=("none", 0))
    if gen_total >= critic_top[1]:
        return ActivationPeak(gen_total, "generator phase", tuple(gen))
    return ActivationPeak(critic_top[1], "critic phase", (critic_top,))
