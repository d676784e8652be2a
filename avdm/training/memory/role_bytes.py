"""Bytes of every role of a built :class:`~avdm.training.distillation.DistillationModule`, read from its
parameters (meta or real: ``numel x element size``), each parameter counted once, by its first owner.

Roles, in the order they claim parameters: LoRA adapters (the generator's, each fake score's: inside the
frozen base), the frozen base (the teachers; shared views once), the text encoder, the VAE, the generator, its
EMA, then per loss plugin its fake score, its target network (consistency distillation) and its discriminator
head. A trainable role keeps float32 gradients and two float32 AdamW moments per parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from avdm.models.lora import AdapterDenoiser, adapter_names, adapter_parameters


@dataclass(frozen=True)
class Role:
    """One role's weights.

    Attributes:
        name: the row of the plan (``generator``, ``sdm fake score (LoRA r16)``, ...).
        weights: bytes of its parameters, in their dtype.
        params: its parameter count.
        dtype: the dtype of its (first) parameter.
        trainable: whether an optimizer updates it (gradients and AdamW state are kept).
        sharded: whether FSDP2 shards it (every network a denoiser view runs and the text encoder; the
            discriminator heads and the VAE stay whole).
    """

    name: str
    weights: int
    params: int
    dtype: str
    trainable: bool
    sharded: bool

    @property
    def gradients(self) -> int:
        """Float32 gradients of a trainable role (its masters are float32)."""
        return 4 * self.params if self.trainable else 0

    @property
    def adamw(self) -> int:
        """AdamW's two float32 moments."""
        return 8 * self.params if self.trainable else 0


def _lora_rank(model: nn.Module, adapter: str) -> int:
    from avdm.models.lora import adapter_config

    return int(adapter_config(model, adapter)["r"])


def module_roles(module: nn.Module) -> list[Role]:
    """The roles of ``module`` (a DistillationModule) with the bytes each holds."""
    claimed: set[int] = set()
    roles: list[Role] = []

    def claim(name: str, params: list[nn.Parameter], trainable: bool, sharded: bool = True) -> None:
        mine = [p for p in params if id(p) not in claimed]
        claimed.update(id(p) for p in mine)
        if mine:
            weights = sum(p.numel() * p.element_size() for p in mine)
            dtype = str(mine[0].dtype).removeprefix("torch.")
            roles.append(Role(name, weights, sum(p.numel() for p in mine), dtype, trainable, sharded))

    generator = module.generator.denoiser
    if isinstance(generator, AdapterDenoiser):
        rank = _lora_rank(generator.model, generator.adapter)
        claim(f"generator (LoRA r{rank})", [p for _, p in generator.trainable_parameters()], True)
    for name, plugin in module.losses.items():
        fake = getattr(plugin, "fake_score", None)
        if isinstance(fake, AdapterDenoiser):
            rank = _lora_rank(fake.model, fake.adapter)
            params = [p for _, p in adapter_parameters(fake.model, fake.adapter)]
            claim(f"{name} fake score (LoRA r{rank})", params, True)
    # Any other adapter of the base (the LoRA generator's EMA, ``generator_ema``): weights, never trained.
    for adapter in sorted(adapter_names(module.teachers.video.model)):
        params = [p for _, p in adapter_parameters(module.teachers.video.model, adapter)]
        claim(f"{adapter.replace('_', ' ')} (LoRA)", params, False)
    claim(f"frozen base (teachers, {module.teacher_dtype})", list(module.teachers.parameters()), False)
    if module.prompt_encoder is not None:
        claim("text encoder", list(module.prompt_encoder.parameters()), False)
    if module.vae is not None:
        claim("VAE", list(module.vae.parameters()), False, sharded=False)
    claim("generator", list(module.generator.parameters()), True)
    if module.generator_ema is not None:
        claim("generator EMA", list(module.generator_ema.parameters()), False)
    for name, plugin in module.losses.items():
        if getattr(plugin, "fake_score", None) is not None:
            claim(f"{name} fake score", list(plugin.fake_score.parameters()), True)
        if getattr(plugin, "target", None) is not None and isinstance(plugin.target, nn.Module):
            claim(f"{name} consistency target", list(plugin.target.parameters()), False)
        if getattr(plugin, "discriminator", None) is not None:
            claim(f"{name} discriminator head", list(plugin.discriminator.parameters()), True, sharded=False)
    claim("other", list(module.parameters()), True, sharded=False)
    return roles
