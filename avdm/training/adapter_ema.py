"""The EMA of a LoRA generator: a second adapter of the same frozen network, not a copy of it.

:class:`~torch.optim.swa_utils.AveragedModel` deep-copies the generator, which for a LoRA generator is the
whole teacher network (the adapter is a view of it): the copy that LoRA roles exist to avoid. Here the
average is the adapter ``generator_ema`` beside ``generator`` (same rank, alpha and targets, never
trained), updated from it after every generator step as AveragedModel with
``get_ema_multi_avg_fn(decay)`` updates its copy: the first update copies, later ones
``theta_ema <- decay theta_ema + (1 - decay) theta``. ``.module`` is the averaged generator, as for
AveragedModel, so sampling and export read either the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from avdm.models.generator import FewStepGenerator
from avdm.models.lora import AdapterDenoiser, adapter_parameters, add_lora

EMA_ADAPTER = "generator_ema"


class AdapterEMA(nn.Module):
    """EMA of the adapter of ``generator`` (an :class:`AdapterDenoiser` generator).

    Args:
        generator: the LoRA generator; its adapter's settings are ``settings``.
        decay: ``decay`` of the average, in (0, 1).
        settings: the generator adapter's ``{rank, alpha, target_modules}`` (``module.generator_lora``).
    """

    def __init__(self, generator: FewStepGenerator, decay: float, settings: Mapping[str, Any]) -> None:
        super().__init__()
        student = generator.denoiser
        if not isinstance(student, AdapterDenoiser):
            raise TypeError("AdapterEMA averages the adapter of a LoRA generator (an AdapterDenoiser)")
        network = student.model
        for p in add_lora(network, EMA_ADAPTER, settings, key="module.generator_lora"):
            p.requires_grad_(False)
        self.decay = float(decay)
        self.source = student.adapter
        self.module = FewStepGenerator(AdapterDenoiser(student.base, EMA_ADAPTER), generator.timesteps)
        self.module.renoise = generator.renoise
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long))
        self._copy()

    def _pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """``(averaged, current)`` parameter pairs, looked up on every call: FSDP2's ``fully_shard``
        replaces a network's parameters with sharded ones after this object is built."""
        network = self.module.denoiser.model
        source = dict(adapter_parameters(network, self.source))
        pairs = []
        for name, averaged in adapter_parameters(network, EMA_ADAPTER):
            pairs.append((averaged, source[name.replace(f".{EMA_ADAPTER}.", f".{self.source}.")]))
        return pairs

    @torch.no_grad()
    def _copy(self) -> None:
        for averaged, current in self._pairs():
            averaged.copy_(current)

    @torch.no_grad()
    def update_parameters(self, generator: FewStepGenerator) -> None:
        """One EMA update from ``generator``'s adapter (local shards under FSDP2: elementwise)."""
        if int(self.n_averaged) == 0:
            self._copy()
        else:
            for averaged, current in self._pairs():
                averaged.lerp_(current, 1.0 - self.decay)
        self.n_averaged += 1
