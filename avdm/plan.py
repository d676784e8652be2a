"""``python -m avdm.plan +experiment=NAME [key=value ...] [--json]``: the memory plan of a training config.

Composes the same config as ``python -m avdm.train`` (plus ``plan.*``: ``device_memory_gb``, ``strict``,
``attention``), builds the run on the meta device (no weights read: configs only,
:mod:`avdm.models.meta_build`) and prints one table per process: bytes of every role, its gradients and
AdamW state, the activation peak and the total (:mod:`avdm.training.memory.plan`); ``--json``: the same
figures in bytes. When the total exceeds the device (or ``plan.device_memory_gb``) one warning line names
the settings that would fit; with ``plan.strict=true`` that line is the error and the exit status is 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from avdm.errors import AvdmUserError, ConfigError, report_user_errors

PLAN_KEYS = {"device_memory_gb": (int, float, type(None)), "strict": (bool,), "attention": (str,)}


class PlanExceedsMemory(AvdmUserError):
    """``plan.strict=true`` and the plan does not fit."""

    label = "error"


def _plan_options(node: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from avdm.training.memory.blocks import ATTENTION

    options = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    for key, value in options.items():
        if key not in PLAN_KEYS:
            raise ConfigError(f"plan.{key}: unknown key; accepted keys: {', '.join(PLAN_KEYS)}")
        if not isinstance(value, PLAN_KEYS[key]) or (key != "strict" and isinstance(value, bool)):
            raise ConfigError(
                f"plan.{key}={value!r}: expected {' or '.join(t.__name__ for t in PLAN_KEYS[key])}"
            )
    gb = options.get("device_memory_gb")
    if gb is not None and not gb > 0:
        raise ConfigError(f"plan.device_memory_gb={gb}: expected a number > 0 or null")
    if options.get("attention", "flash") not in ATTENTION:
        raise ConfigError(f"plan.attention={options['attention']!r}: expected one of {', '.join(ATTENTION)}")
    return options


def compose_plan_config(argv: list[str]) -> Any:
    """The composed ``conf/plan.yaml`` of ``argv``'s overrides (one line on a composition error)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from avdm.config import CONFIG_DIR
    from avdm.hydra_entry import check_command_line

    check_command_line("plan", argv)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("plan", overrides=list(argv))
    finally:
        GlobalHydra.instance().clear()


def device_memory(options: dict[str, Any]) -> int | None:
    """``plan.device_memory_gb`` in bytes, else the CUDA device's memory, else ``None``."""
    import torch

    if options.get("device_memory_gb") is not None:
        return int(options["device_memory_gb"] * 1e9)
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return None


@report_user_errors
def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    unknown = [a for a in argv if a.startswith("-")]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown option; accepted: --json and key=value overrides")
    from omegaconf import open_dict

    from avdm.config import validate
    from avdm.training.memory.build import meta_module
    from avdm.training.memory.plan import format_table, plan_module, settings_from_config, warning_line

    cfg = compose_plan_config(argv)
    options = _plan_options(cfg.get("plan"))
    with open_dict(cfg):
        cfg.pop("plan", None)
        cfg.paths.output_dir = "."  # nothing is written: ${hydra:runtime.output_dir} needs a running job
    validate(cfg)
    module = meta_module(cfg)
    limit = device_memory(options)
    plan = plan_module(module, settings_from_config(cfg, module, options.get("attention", "flash")), limit)
    warning = warning_line(module, plan, limit) if limit is not None and plan.total > limit else None
    if warning and options.get("strict"):
        raise PlanExceedsMemory(warning)
    print(json.dumps(plan.to_json(), indent=2) if as_json else format_table(plan))
    if warning:
        print(f"avdm: warning: {warning}", file=sys.stderr)
    return plan.to_json()


if __name__ == "__main__":
    main()
