"""The roles of a distillation run besides the plugins' critics: the frozen teacher family, the student
(a full trainable copy of the video teacher, or the teacher plus a ``generator`` LoRA adapter) and its EMA.

Trainable copies are made before the frozen roles are cast to ``model.teacher_dtype``, so they keep float32
master weights (:func:`cast_frozen`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from avdm.config_schema import check_range
from avdm.models.denoiser import Denoiser, freeze_, trainable_copy
from avdm.models.generator import FewStepGenerator
from avdm.models.lora import AdapterDenoiser, add_lora
from avdm.models.pretrained import DTYPES
from avdm.training.adapter_ema import AdapterEMA
from avdm.training.sharding import on_local_shards


def freeze_all(*roles: nn.Module | None) -> None:
    """Freeze every role in place (no gradients, eval mode); ``None`` entries (no VAE) are skipped."""
    for role in roles:
        if role is not None:
            freeze_(role)


def build_student(teacher: Denoiser, generator_lora: Mapping[str, Any] | None) -> Denoiser:
    """The generator's denoiser: a trainable copy of ``teacher``, or with ``generator_lora`` the teacher
    itself seen through a new ``generator`` adapter."""
    if generator_lora is None:
        return trainable_copy(teacher)
    add_lora(teacher.model, "generator", generator_lora, key="module.generator_lora")
    return AdapterDenoiser(teacher, "generator")


def generator_ema(
    generator: FewStepGenerator, ema_decay: float | None, generator_lora: Mapping[str, Any] | None = None
) -> AveragedModel | AdapterEMA | None:
    """An exponential moving average of ``generator`` (updated on local shards under FSDP2), or ``None``;
    of a LoRA generator (``generator_lora``), the average is a second adapter (:class:`AdapterEMA`)."""
    if ema_decay is None:
        return None
    check_range("module.ema_decay", ema_decay)
    if generator_lora is not None:
        return AdapterEMA(generator, ema_decay, generator_lora)
    ema = AveragedModel(
        generator, multi_avg_fn=on_local_shards(get_ema_multi_avg_fn(ema_decay)), use_buffers=True
    )
    return ema.requires_grad_(False)


def cast_frozen(owner: nn.Module, frozen: tuple[nn.Module | None, ...], teacher_dtype: str) -> None:
    """Cast the frozen roles to ``teacher_dtype``; LoRA adapters living inside them stay float32."""
    if teacher_dtype == "float32":
        return
    for role in frozen:
        if role is not None:
            role.to(DTYPES[teacher_dtype])
    for name, p in owner.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()


@contextmanager
def frozen_for_critics(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Turn off ``requires_grad`` on the trainable ``params`` (the generator's) while the critics update, so
    their graphs hold no generator gradient path; restored on exit."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
