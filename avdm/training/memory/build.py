"""The DistillationModule of a config with every teacher network on the meta device (no weights read)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from avdm.errors import ConfigError
from avdm.models.meta_build import meta_bundle
from avdm.training.build import build_losses, module_takes_losses


def meta_module(cfg: DictConfig) -> Any:
    """``cfg.module`` over :func:`~avdm.models.meta_build.meta_bundle` of ``cfg.model``; the new small
    modules it makes (discriminator heads, counters) are real, the copies of the teachers meta."""
    import diffusers

    if not module_takes_losses(cfg):
        raise ConfigError("module: the memory plan covers distillation runs (module=distillation)")
    diffusers.utils.logging.set_verbosity_error()  # "kept in float32" notes of casting meta networks
    models = meta_bundle(OmegaConf.to_container(cfg.model, resolve=True))
    return instantiate(cfg.module, _partial_=True)(models=models, losses=build_losses(cfg))
