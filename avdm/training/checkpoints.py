"""Rebuild a trained :class:`~avdm.training.module.DistillationModule` from a run directory and a checkpoint.

Checkpoints hold trainable weights only (the frozen teachers are rebuilt from their sources), so
loading needs the run's config: Hydra saves it as ``<run>/.hydra/config.yaml`` and Lightning writes
checkpoints to ``<run>/checkpoints/*.ckpt``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from avdm.models.bundle import ModelBundle
from avdm.training.build import build_run
from avdm.training.checkpoint_io import CheckpointError, read_fitting_checkpoint
from avdm.training.module import DistillationModule

DISTILLATION_TARGET = f"{DistillationModule.__module__}.{DistillationModule.__qualname__}"


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
    """Load a saved run config; ``paths.output_dir`` (``${hydra:...}``) is pinned to the run directory."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Run config '{path}' does not exist")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    run_dir = path.parent.parent if path.parent.name == ".hydra" else path.parent
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir), force_add=True)
    # Runs saved before the module became a config node (0.1.0 before the training/ layout): a plain
    # block of DistillationModule arguments beside an ``autoencoder`` key.
    if "_target_" not in cfg.get("module", {}):
        OmegaConf.update(cfg, "module._target_", DISTILLATION_TARGET, force_add=True)
        cfg.pop("autoencoder", None)
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
