"""``python -m avdm.train +experiment=NAME [key=value ...]``: compose, validate, build, fit.

Errors in the user's config or files (a key out of range, missing weights) end the run with one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from avdm.config import validate
from avdm.errors import report_user_errors

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("avdm.train")
# conf/ ships inside the wheel as avdm/conf; in a source checkout it sits beside the package.
_PACKAGED = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "conf")


def build_losses(cfg: DictConfig) -> dict[str, Any]:
    """The loss plugins of ``cfg.loss`` by role key; a key set to null (``loss.sdm=null``) is dropped."""
    return {name: instantiate(node) for name, node in cfg.loss.items() if node is not None}


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule of ``cfg``: a :class:`~avdm.module.DistillationModule` over the model bundle and
    the loss plugins, or, when the config has an ``autoencoder`` block, the VAE trainer of teacher
    training (:class:`~avdm.autoencoder.AutoencoderModule`)."""
    models = instantiate(cfg.model)
    if cfg.get("autoencoder"):
        from avdm.autoencoder import AutoencoderModule

        return AutoencoderModule(models, **cfg.autoencoder)
    from avdm.module import DistillationModule

    return DistillationModule(models, build_losses(cfg), **cfg.module)


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg`` and train; returns the final logged metrics."""
    import lightning as L

    from avdm.callbacks import IterationProgressBar

    validate(cfg)
    # Expected with avdm: frozen teachers are in eval mode, and checkpoints hold post-update weights.
    warnings.filterwarnings("ignore", message=r"Found .* module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    datamodule = instantiate(cfg.data)
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(IterationProgressBar())
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for counter in ("generator_steps", "critic_steps", "nonfinite_skips"):
        if hasattr(module, counter):
            metrics[counter] = int(getattr(module, counter))
    out = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        log.info("Outputs in %s (checkpoints/, csv/metrics.csv, metrics.json)", out)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> None:
    fit(cfg)


if __name__ == "__main__":
    main()
