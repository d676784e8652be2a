"""Start-up validation of a composed config, before any model is built.

Each error names the config key and what is accepted. Checks:

* every node with a ``_target_`` names an importable callable and passes only arguments that callable
  accepts (unknown keys are rejected, with the accepted ones listed);
* loss plugins are :class:`~avdm.losses.base.DistillationLoss` subclasses;
* any ``t_min`` / ``t_max`` pair lies in [0, 1] with ``t_min < t_max``;
* weights are non-negative; a frame count ``num_frames`` of a loss is no larger than the model's;
* an ``autoencoder`` block (VAE training instead of distillation) has only known keys.

Importing it registers the ``${avdm_asset:NAME}`` resolver (weights shipped inside the package).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from avdm.errors import ConfigError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def asset_path(name: str) -> str:
    """Absolute path of ``avdm/assets/NAME`` (weights shipped with the package); ``${avdm_asset:NAME}``."""
    return str(ASSETS_DIR / name)


if not OmegaConf.has_resolver("avdm_asset"):
    OmegaConf.register_new_resolver("avdm_asset", asset_path)

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _resolve_target(path: str, key: str) -> Callable[..., Any]:
    try:
        return get_object(path)
    except Exception as err:  # Hydra wraps import failures in several exception types
        raise ConfigError(f"{key}._target_: cannot import {path!r} ({type(err).__name__})") from None


def _check_arguments(node: DictConfig, key: str) -> Callable[..., Any]:
    target = _resolve_target(node["_target_"], key)
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return target
    accepted = [
        n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL and n != "self"
    ]
    unknown = [k for k in node if k not in _HYDRA_KEYS and k not in accepted]
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: unknown key for {node['_target_']}; accepted keys: {accepted}"
        )
    return target


def _walk_targets(node: Any, key: str) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_arguments(node, key)
        for k in node:
            if k not in _HYDRA_KEYS:
                _walk_targets(node[k], f"{key}.{k}" if key else str(k))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk_targets(item, f"{key}[{i}]")


def _check_ranges(node: DictConfig, key: str) -> None:
    if "t_min" in node or "t_max" in node:
        t_min, t_max = node.get("t_min", 0.0), node.get("t_max", 1.0)
        if not (0.0 <= t_min < t_max <= 1.0):
            raise ConfigError(
                f"{key}.t_min={t_min}, {key}.t_max={t_max}: need 0 <= t_min < t_max <= 1 "
                f"(fractions of the teacher's T)"
            )
    if "weight" in node and node["weight"] < 0:
        raise ConfigError(f"{key}.weight={node['weight']}: must be >= 0")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first invalid key of a composed training config."""
    from avdm.losses.base import DistillationLoss

    if cfg.get("autoencoder"):
        from avdm.autoencoder import AutoencoderModule

        accepted = [n for n in inspect.signature(AutoencoderModule).parameters if n != "models"]
        unknown = [k for k in cfg.autoencoder if k not in accepted]
        if unknown:
            raise ConfigError(f"autoencoder.{unknown[0]}: unknown key; accepted keys: {accepted}")
    if not cfg.get("loss") or all(node is None for node in cfg.loss.values()):
        raise ConfigError("loss: no loss plugin selected; pick some, e.g. 'loss=[frame_sdm,gan]'")
    model_frames = OmegaConf.select(cfg, "model.num_frames")
    for name, node in cfg.loss.items():
        if node is None:  # `loss.NAME=null` drops a plugin (e.g. one an inherited experiment configured)
            continue
        key = f"loss.{name}"
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"{key}: a loss plugin needs a _target_ (a DistillationLoss class)")
        target = _check_arguments(node, key)
        if not (inspect.isclass(target) and issubclass(target, DistillationLoss)):
            raise ConfigError(
                f"{key}._target_: {node['_target_']} is not a loss plugin "
                f"(avdm.losses.DistillationLoss subclass)"
            )
        _check_ranges(node, key)
        frames = node.get("num_frames")
        if frames is not None and model_frames is not None and not 1 <= frames <= model_frames:
            raise ConfigError(f"{key}.num_frames={frames}: must be in [1, model.num_frames={model_frames}]")
    for section in ("model", "data", "trainer", "callbacks", "logger"):
        if section in cfg and cfg[section] is not None:
            _walk_targets(cfg[section], section)
    from avdm.module import DistillationModule

    accepted = [n for n in inspect.signature(DistillationModule).parameters if n not in ("models", "losses")]
    unknown = [k for k in cfg.module if k not in accepted]
    if unknown:
        raise ConfigError(f"module.{unknown[0]}: unknown key; accepted keys: {accepted}")
    if cfg.module.critic_steps_per_generator_step < 1:
        raise ConfigError(
            "module.critic_steps_per_generator_step: must be >= 1, got "
            f"{cfg.module.critic_steps_per_generator_step}"
        )
