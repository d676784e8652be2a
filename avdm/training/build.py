"""One builder of a run from a composed config: the models, the loss plugins and the LightningModule.

``train``, ``sample``, ``export``, ``compare`` and checkpoint loading all build through here, so a run is
rebuilt exactly as it was trained. The module is a Hydra node (``conf/module/*.yaml``): its ``_target_``
is called with the model bundle and, when it takes them, the loss plugins of ``cfg.loss``
(:class:`~avdm.training.distillation.DistillationModule` does; the VAE stage's
:class:`~avdm.training.autoencoder.AutoencoderModule` does not).
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

import avdm.config  # noqa: F401  (registers ${avdm_asset:...} used by configs of shipped weights)
from avdm.losses.base import DistillationLoss
from avdm.models.bundle import ModelBundle


def module_takes_losses(cfg: DictConfig) -> bool:
    """Whether ``cfg.module``'s class is driven by loss plugins (a ``losses`` argument)."""
    return "losses" in inspect.signature(get_object(cfg.module._target_)).parameters


def build_losses(cfg: DictConfig) -> dict[str, DistillationLoss]:
    """The loss plugins of ``cfg.loss`` by role key; a key set to null (``loss.sdm=null``) is dropped."""
    return {name: instantiate(node) for name, node in (cfg.get("loss") or {}).items() if node is not None}


def build_run(cfg: DictConfig) -> tuple[ModelBundle, L.LightningModule]:
    """The teacher family of ``cfg.model`` and the module of ``cfg.module`` over it."""
    models: ModelBundle = instantiate(cfg.model)
    extra: dict[str, Any] = {"losses": build_losses(cfg)} if module_takes_losses(cfg) else {}
    module = instantiate(cfg.module, _partial_=True)(models=models, **extra)
    return models, module


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule of ``cfg`` (:func:`build_run` without the bundle)."""
    return build_run(cfg)[1]
