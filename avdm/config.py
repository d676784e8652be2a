"""Start-up validation of a composed config, before any model is built.

Each error names the config key and what is accepted. Checks:

* every node with a ``_target_`` names an importable callable and passes only arguments that callable
  accepts (unknown keys are rejected, with the accepted ones listed);
* loss plugins are :class:`~avdm.losses.base.DistillationLoss` subclasses;
* every value's type, finiteness and range, and the order of ``t_min < t_max`` (a partner not given: the
  target's default), by the rules of :mod:`avdm.config_schema`, which the constructors check too;
* a frame count ``num_frames`` of a loss is no larger than the model's; the generator's timestep ladder;
* ``module`` names a LightningModule (``conf/module/``) and passes it only keys it accepts.

Importing it registers the ``${avdm_asset:NAME}`` resolver (weights shipped inside the package).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from avdm.config_schema import bad_value, call_parameters, check_arguments, check_ladder, check_value
from avdm.errors import ConfigError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# conf/ ships inside the wheel as avdm/conf; in a source checkout it sits beside the package.
_PACKAGED = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "conf")


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


def plain_values(node: DictConfig) -> dict[str, Any]:
    """The node's values as plain Python (interpolations resolved); a value that cannot be resolved
    outside a running Hydra job (``${hydra:...}``) is left out."""
    values = {}
    for k in node:
        if k in _HYDRA_KEYS:
            continue
        try:
            child = node[k]
        except Exception:
            continue
        if isinstance(child, (DictConfig, ListConfig)):
            try:
                values[str(k)] = OmegaConf.to_container(child, resolve=True)
            except Exception:
                continue
        else:
            values[str(k)] = child
    return values


def check_keys(
    values: dict[str, Any], key: str, target: Callable[..., Any], skip: tuple[str, ...] = ()
) -> None:
    """Unknown keys, wrong types, non-finite numbers and values out of range, for one call of ``target``
    (``skip``: parameters the code passes itself, such as ``models``)."""
    names, open_ended = call_parameters(target)
    if not open_ended:
        accepted = [n for n in names if n not in skip]
        unknown = [k for k in values if k not in accepted]
        if unknown:
            prefix = f"{key}." if key else ""
            raise ConfigError(f"{prefix}{unknown[0]}: unknown key; accepted keys: {', '.join(accepted)}")
    check_arguments(values, key, target)


def _check_arguments(node: DictConfig, key: str) -> Callable[..., Any]:
    target = _resolve_target(node["_target_"], key)
    check_keys(plain_values(node), key, target)
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


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` on the first invalid key of a composed training config."""
    from avdm.losses.base import DistillationLoss

    _refuse_unknown_top_level(cfg, TOP_LEVEL_KEYS)
    check_value("seed", "seed", cfg.get("seed", 0), int)
    check_value("task_name", "task_name", cfg.get("task_name", ""), str)
    check_value("ckpt_path", "ckpt_path", cfg.get("ckpt_path"), str | None)
    module_class = _check_module(cfg)
    if "losses" not in inspect.signature(module_class).parameters:  # e.g. the VAE stage: no plugins
        _walk_sections(cfg)
        return
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
        frames = node.get("num_frames")
        if frames is not None and model_frames is not None and not 1 <= frames <= model_frames:
            raise ConfigError(f"{key}.num_frames={frames}: must be in [1, model.num_frames={model_frames}]")
    _walk_sections(cfg)
    module_values = plain_values(cfg.module)
    _check_ladder(module_values.get("generator_timesteps"))
    for i, group in enumerate(module_values.get("generator_param_groups") or []):
        _check_param_group(group, f"module.generator_param_groups[{i}]")


def _check_module(cfg: DictConfig) -> type:
    """``module``: a LightningModule class taking the model bundle, called with known keys only."""
    import lightning as L

    node = cfg.get("module")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError("module: needs a _target_ (a LightningModule class, e.g. module=distillation)")
    target = _resolve_target(node["_target_"], "module")
    if not (inspect.isclass(target) and issubclass(target, L.LightningModule)):
        raise ConfigError(f"module._target_: {node['_target_']} is not a LightningModule class")
    check_keys(plain_values(node), "module", target, skip=("models", "losses"))
    return target


def _walk_sections(cfg: DictConfig) -> None:
    for section in ("model", "data", "trainer", "callbacks", "logger"):
        if section in cfg and cfg[section] is not None:
            _walk_targets(cfg[section], section)


def _refuse_unknown_top_level(cfg: DictConfig, accepted: frozenset[str] | set[str]) -> None:
    unknown = [k for k in cfg if k not in accepted]
    if unknown:
        names = ", ".join(sorted(accepted))
        raise ConfigError(f"{unknown[0]}: unknown top-level key; accepted keys: {names}")


# The keys of conf/train.yaml and its config groups; anything else at the top is a typo.
TOP_LEVEL_KEYS = frozenset(
    {"model", "loss", "data", "trainer", "callbacks", "logger", "module", "task_name", "seed", "ckpt_path",
     "paths", "hydra"}
)  # fmt: skip


def _check_ladder(ladder: Any) -> None:
    """``module.generator_timesteps`` (:func:`~avdm.config_schema.check_ladder`, with every shipped
    teacher's 1000 timesteps; the generator checks the teacher's own ``num_train_timesteps``)."""
    if ladder is not None:
        check_ladder("module.generator_timesteps", ladder)


def _check_param_group(group: Any, key: str) -> None:
    """One ``{pattern, lr, frozen, weight_decay, betas, eps}`` entry of a name-pattern parameter group."""
    accepted = {"pattern": str, "lr": float, "frozen": bool, "weight_decay": float, "betas": list[float],
                "eps": float}  # fmt: skip
    if not isinstance(group, dict) or "pattern" not in group:
        raise bad_value(key, group, "expected {pattern: REGEX, lr: NUMBER} or {pattern: REGEX, frozen: true}")
    for name, value in group.items():
        if name not in accepted:
            raise ConfigError(f"{key}.{name}: unknown key; accepted keys: {', '.join(accepted)}")
        check_value(f"{key}.{name}", name, value, accepted[name])
    if "lr" not in group and not group.get("frozen", False):
        raise ConfigError(f"{key}: needs an lr (or frozen: true)")
    try:
        re.compile(group["pattern"])
    except re.error as err:
        raise bad_value(f"{key}.pattern", group["pattern"], f"not a regular expression ({err})") from None


def validate_command(
    cfg: DictConfig,
    scalars: dict[str, Any],
    calls: dict[str, Callable[..., Any]],
    groups: tuple[str, ...] = ("model",),
) -> None:
    """Validate the config of a tool (``synthesize``, ``precompute``) as :func:`validate` does a training
    config: ``scalars`` maps top-level keys to their types, ``calls`` top-level nodes to the callable
    their keys go to, ``groups`` are config groups of ``_target_`` nodes. Values still ``???`` are left
    to the tool, which names what to set."""
    _refuse_unknown_top_level(cfg, {*scalars, *calls, *groups, "hydra"})
    for name, annotation in scalars.items():
        if name in cfg and not OmegaConf.is_missing(cfg, name):
            check_value(name, name, cfg[name], annotation)
    for name, target in calls.items():
        if isinstance(cfg.get(name), DictConfig):
            check_keys(plain_values(cfg[name]), name, target)
    for name in groups:
        if cfg.get(name) is not None:
            _walk_targets(cfg[name], name)
