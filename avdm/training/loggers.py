"""The run's loggers (``conf/logger/*``, a multi-select group): built, told the config, shown the samples.

Lightning's loggers take scalars from ``self.log``; what they do not get by themselves is the composed
Hydra config (sent here as hyperparameters) and the sample videos. Videos go from the files the
sample callback already wrote, in the form each logger shows without extra packages: the mp4 itself
to Weights & Biases (``wandb.Video`` of a file needs no moviepy) and MLflow (an artifact), the PNG
sheet of its frames to TensorBoard (whose ``add_video`` would need moviepy to encode a GIF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from avdm.errors import ConfigError

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """One logger per non-null entry of ``cfg.logger``; a logger whose package is missing is one line."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        try:
            loggers.append(instantiate(node))
        except Exception as err:
            cause = err.__cause__ or err
            if isinstance(cause, (ImportError, ModuleNotFoundError)) or "pip install" in str(cause):
                extra = EXTRAS.get(str(name), str(name))
                raise ConfigError(
                    f"logger={name}: its package is not installed; pip install 'avdm[{extra}]'"
                ) from None
            raise
    return loggers


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain data (interpolations resolved where they can be)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # an interpolation only a running Hydra job resolves
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """Every logger gets the run's whole config as hyperparameters (TensorBoard also as YAML text)."""
    config = run_config(cfg)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # TensorBoard writes its HPARAMS summary only with a metric to relate to (Lightning's
            # default is a placeholder hp_metric = -1); the generator step is one the run logs anyway.
            logger.log_hyperparams(config, metrics={"step/generator": 0.0})
            logger.experiment.add_text("config", f"```yaml\n{OmegaConf.to_yaml(config)}\n```", 0)
        else:
            logger.log_hyperparams(config)


def log_samples(loggers: list[Logger], mp4: Path, sheet: Path, step: int, fps: int) -> None:
    """Show the sample grid written at ``mp4`` (and its frames at ``sheet``, a PNG) on every logger
    that takes pictures; the CSV logger takes none."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_video("samples", [str(mp4)], step=step, fps=[fps], format=["mp4"])
        elif isinstance(logger, TensorBoardLogger):
            import numpy as np
            from PIL import Image

            image = np.asarray(Image.open(sheet).convert("RGB"))
            logger.experiment.add_image("samples", image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            for path in (mp4, sheet):
                logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="samples")
