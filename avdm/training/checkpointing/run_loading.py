"""Rebuild a trained :class:`~avdm.training.distillation.DistillationModule` from a run and a checkpoint.

Checkpoints hold trainable weights only (the frozen teachers are rebuilt from their sources), so
loading needs the run's config: Hydra saves it as ``<run>/.hydra/config.yaml`` and Lightning writes
checkpoints to ``<run>/checkpoints/*.ckpt``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from avdm.models.bundle import ModelBundle
from avdm.training.build import build_run
from avdm.training.checkpointing.storage import CheckpointError, read_fitting_checkpoint
from avdm.training.distillation import DistillationModule

# Modules of run-config targets renamed since avdm 0.1's first layout (the runs of the README's tables),
# read under their new names.
MOVED_MODULES = {
    "avdm.training.module": "avdm.training.distillation",
    "avdm.models.animatediff": "avdm.models.families.animatediff",
    "avdm.models.wan": "avdm.models.families.wan",
    "avdm.training.diagnostics": "avdm.training.callbacks.diagnostics",
    "avdm.training.collapse_alarm": "avdm.training.callbacks.collapse_alarm",
    "avdm.training.run_plots": "avdm.training.callbacks.plots",
}
MOVED_CALLBACKS = {"SampleVideos": "samples", "ExportTeacher": "export_teacher"}  # avdm.training.callbacks.X


def renamed_target(target: str) -> str:
    """``target`` under its current name (itself when it did not move)."""
    module, _, name = target.rpartition(".")
    if module == "avdm.training.callbacks" and name in MOVED_CALLBACKS:
        return f"{module}.{MOVED_CALLBACKS[name]}.{name}"
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def _rename_targets(node: Any) -> None:
    if isinstance(node, DictConfig):
        if isinstance(node.get("_target_"), str):
            node._target_ = renamed_target(node._target_)
        for key in node:
            _rename_targets(node._get_node(key))
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            _rename_targets(node._get_node(index))


@dataclass
class LoadedRun:
    """A rebuilt run: its config, the teacher family and the module with the checkpoint's weights."""

    cfg: DictConfig
    bundle: ModelBundle
    module: DistillationModule
    checkpoint: dict[str, Any]


def run_config_path(ckpt_path: str | Path) -> Path:
    """``<run>/.hydra/config.yaml`` for ``<run>/checkpoints/NAME.ckpt`` (also tried: beside the ckpt)."""
    ckpt = Path(ckpt_path)
    for run_dir in (ckpt.parent.parent, ckpt.parent):
        candidate = run_dir / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"No run config for '{ckpt}': expected {ckpt.parent.parent / '.hydra' / 'config.yaml'} "
        "(Hydra saves it in the run directory; pass --config PATH to use another)"
    )


def load_run_config(path: str | Path) -> DictConfig:
    """Load a saved run config; ``paths.output_dir`` (``${hydra:...}``) is pinned to the run directory and
    targets renamed since the run are read under their new names (:func:`renamed_target`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Run config '{path}' does not exist")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    run_dir = path.parent.parent if path.parent.name == ".hydra" else path.parent
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir), force_add=True)
    _rename_targets(cfg)
    return cfg


def load_checkpoint_into(module: DistillationModule, ckpt_path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint (trainable weights only) into ``module``; returns the checkpoint dict.

    The frozen teacher weights come from ``module`` itself (``on_load_checkpoint``), then every key
    must match (``strict=True``).
    """
    checkpoint = read_fitting_checkpoint(module, ckpt_path)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    return checkpoint


def load_run(ckpt_path: str | Path, config_path: str | Path | None = None) -> LoadedRun:
    """Rebuild the module of a run from ``ckpt_path`` and the run's saved config; eval mode, CPU."""
    cfg = load_run_config(config_path or run_config_path(ckpt_path))
    warnings.filterwarnings("ignore", message=r"Found .* module\(s\) in eval mode")
    bundle, module = build_run(cfg)
    if not isinstance(module, DistillationModule):
        raise CheckpointError(f"'{ckpt_path}' is a {type(module).__name__} run, not a distilled student")
    checkpoint = load_checkpoint_into(module, ckpt_path)
    module.eval()
    return LoadedRun(cfg, bundle, module, checkpoint)
