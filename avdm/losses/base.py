"""The plugin contract: the only thing a distillation objective depends on.

A plugin is one objective (2D SDM, denoising GAN, trajectory regression, ...). The training module
drives any set of them without knowing which:

* generator phase: ``weight * plugin.generator_loss(ctx)`` is summed over plugins and backpropagated
  into the generator;
* after a generator update: ``plugin.after_generator_step(ctx)`` (e.g. an EMA target follows the generator);
* critic phase (``critic_steps_per_generator_step`` times per generator step): each plugin that owns a
  trainable critic (a fake score, a discriminator head) returns ``plugin.critic_loss(ctx)``, which is
  backpropagated into ``plugin.critic_parameters()`` only, by that plugin's own optimizer.

Plugins never call ``backward`` or ``step``; they never own the teachers or the generator.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from avdm.config_schema import check_parameters
from avdm.models.denoiser import Denoiser
from avdm.models.generator import FewStepGenerator


class LossOutput(NamedTuple):
    """A scalar loss and detached values to log under ``{phase}/{plugin}/{key}``."""

    loss: Tensor
    logs: dict[str, Tensor]


class TeacherBank(nn.Module):
    """The frozen teacher roles. ``image`` may share every weight with ``video`` (AnimateDiff).

    Attributes:
        video: the video teacher (real video score; its encoder is the denoising-GAN backbone).
        image: the 2D (frame-level) teacher, or ``None`` for teachers without one.
    """

    def __init__(self, video: Denoiser, image: Denoiser | None = None) -> None:
        super().__init__()
        self.video = video
        self.image = image


@dataclass(frozen=True)
class StepContext:
    """What one generator or critic step hands every plugin.

    Attributes:
        x0_fake: the generator's clean sample ``(B, C, F, H, W)``; carries gradient in the generator
            phase and is detached in the critic phase. ``None`` when no plugin of the run reads it
            (``needs_generator_sample``): the backward-simulation pass is then skipped.
        text: text embeddings of the prompts ``(B, L, D)``.
        uncond_text: text embeddings of the empty prompt ``(B, L, D)`` for classifier-free guidance.
        batch: the data batch: ``latents`` (real clips ``(B, C, F, H, W)``), SynVid trajectories, ...
        teachers: the frozen teacher roles.
        generator: the trainable few-step generator (trajectory losses run it on their own inputs).
        generator_step: generator updates done so far (not ``trainer.global_step``).
    """

    x0_fake: Tensor | None
    text: Tensor
    batch: Mapping[str, Any]
    teachers: TeacherBank
    generator: FewStepGenerator
    uncond_text: Tensor | None = None
    generator_step: int = 0

    def detached(self) -> StepContext:
        """The same context with ``x0_fake`` cut from the generator's graph (critic phase)."""
        return replace(self, x0_fake=None if self.x0_fake is None else self.x0_fake.detach())


class DistillationLoss(nn.Module, abc.ABC):
    """One objective with a weight (lambda); owns its critic, never the teacher or the generator.

    Args:
        weight: lambda multiplying :meth:`generator_loss` in the generator's total loss (>= 0).
    """

    #: Whether the plugin reads ``ctx.x0_fake``; trajectory losses run the student on their own inputs.
    needs_generator_sample: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        check_parameters(self, weight=weight)
        self.weight = float(weight)

    def bind(self, teachers: TeacherBank) -> None:
        """Called once before training with the frozen teachers: build critics from them here
        (e.g. a fake score initialized as a trainable copy of a teacher). Default: nothing."""

    @abc.abstractmethod
    def generator_loss(self, ctx: StepContext) -> LossOutput:
        """The unweighted loss whose gradient reaches the generator through ``ctx.x0_fake``."""

    def critic_loss(self, ctx: StepContext) -> LossOutput | None:
        """The loss of this plugin's own critic on a detached context, or ``None`` if it has none."""
        return None

    def after_generator_step(self, ctx: StepContext) -> None:
        """Called after every generator update that was taken, with that step's context (``ctx.generator``
        holds the updated weights): move an EMA target here, for instance. Default: nothing."""

    def rename_legacy_keys(self, state_dict: MutableMapping[str, Any], prefix: str) -> None:
        """Rename, in place, the keys under ``prefix`` (this plugin's, e.g. ``losses.gan.``) that older
        versions of the plugin wrote under other names, so that their checkpoints fit and load. Plugins
        apply it in their own ``load_state_dict``; a caller that compares key sets before loading (a
        resume) calls it first. Default: nothing was renamed."""

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable critic parameters (fake score, discriminator head) for this plugin's optimizer."""
        return (p for p in self.parameters() if p.requires_grad)

    @property
    def has_critic(self) -> bool:
        return any(True for _ in self.critic_parameters())
