"""Fit a run: validate the config, build it, train, and report how it ended.

A stop by SIGINT / SIGTERM saves ``last.ckpt`` at the step boundary and ends with
:class:`TrainingStopped` (the resume command in its message); non-finite training names the last good
checkpoint; every other problem of the user's config or files is one :class:`~avdm.errors.AvdmUserError`.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from avdm.config import validate
from avdm.errors import AvdmUserError
from avdm.training.build import build_module
from avdm.training.callbacks.final_checkpoint import EXIT_CODES, FinalCheckpoint
from avdm.training.callbacks.memory_plan import MemoryPlanLog
from avdm.training.callbacks.peer_watch import PEER_DIED_EXIT, PeerWatch
from avdm.training.callbacks.progress import IterationProgressBar
from avdm.training.checkpointing.storage import (
    AtomicCheckpointIO,
    read_fitting_checkpoint,
    recover_renamed_checkpoint,
)
from avdm.training.loggers import build_loggers, log_config
from avdm.training.update import NonFiniteLossError, NonFiniteWeightsError

log = logging.getLogger("avdm.train")


class TrainingStopped(AvdmUserError):
    """Training was stopped by SIGINT / SIGTERM after its checkpoint was written; exit 130 / 143."""

    label = "stopped"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PeerDied(AvdmUserError):
    """Another process of a multi-process run ended; this one stopped instead of waiting for it."""

    exit_code = PEER_DIED_EXIT


def resume_command(ckpt: Path, output_dir: Path) -> str:
    """The command line that continues this run from ``ckpt`` in the same folder."""
    keep = [a for a in sys.argv[1:] if not a.startswith(("ckpt_path=", "hydra.run.dir="))]
    args = [*keep, f"ckpt_path={ckpt.resolve()}", f"hydra.run.dir={output_dir.resolve()}"]
    return " ".join(["python -m avdm.train", *(shlex.quote(a) for a in args)])


def check_resume_checkpoint(module: L.LightningModule, ckpt_path: str | None, output_dir: Path) -> str | None:
    """The file ``ckpt_path`` names, checked to be a whole checkpoint of this very module (one line if
    not); ``"last"`` when no ``last.ckpt`` exists yet is left to Lightning (it starts from scratch)."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path)
    if ckpt_path == "last":
        path = output_dir / "checkpoints" / "last.ckpt"
        if not recover_renamed_checkpoint(path):  # a file, or a sharded folder (a save killed mid-rename)
            return None
    read_fitting_checkpoint(module, path, mmap=True)  # Lightning reads it again to resume
    return str(path)


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg`` and train; returns the final logged metrics.

    Raises:
        TrainingStopped: SIGINT / SIGTERM; ``last.ckpt`` holds the step it names.
        AvdmUserError: a config, data or checkpoint problem, or non-finite training (one line each).
    """
    validate(cfg)
    # Expected with avdm: frozen teachers are in eval mode, and checkpoints hold post-update weights.
    warnings.filterwarnings("ignore", message=r"Found .* module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    module = build_module(cfg)
    resumed_from = check_resume_checkpoint(module, cfg.ckpt_path, out)
    datamodule = instantiate(cfg.data)
    final = FinalCheckpoint()
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    callbacks += [final, MemoryPlanLog(cfg)]  # the memory plan logged at the start (analytic)
    peers = PeerWatch(lambda ckpt: resume_command(ckpt, out))  # a rank that dies: one line, no hang
    callbacks.append(peers)
    checkpoint_io = AtomicCheckpointIO(resumed_from)
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(IterationProgressBar())
    loggers = build_loggers(cfg)
    log_config(loggers, cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[checkpoint_io]
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except SIGTERMException:
        final.stopped_by = final.stopped_by or "SIGTERM"
    except (NonFiniteLossError, NonFiniteWeightsError) as err:
        raise type(err)(f"{err}; {checkpoint_io.good_checkpoint_text()}") from None
    except AvdmUserError:
        raise  # every rank's own one line (bad data, ...), even when another rank has ended of it
    except Exception:
        if (what := peers.dead_peer()) is not None:  # a collective failed because a rank died (gloo)
            peers.teardown(trainer, module, "fit")  # this line, not the watcher's too
            raise PeerDied(peers.stopped_line(what)) from None
        raise
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for counter in ("generator_steps", "critic_steps", "nonfinite_skips"):
        if hasattr(module, counter):
            metrics[counter] = int(getattr(module, counter))
    for callback in callbacks:  # the diagnostics' last values, the alarms fired
        if callable(summary := getattr(callback, "summary", None)):
            metrics.update(summary())
    if final.stopped_by:
        metrics["stopped_by"] = final.stopped_by  # type: ignore[assignment]
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        logs = ", ".join(f"{name}/" for name, node in (cfg.get("logger") or {}).items() if node is not None)
        log.info("Outputs in %s (checkpoints/, metrics.json%s)", out, f", {logs}" if logs else "")
    if final.stopped_by:
        saved = final.saved or checkpoint_io.last_good
        where = f"saved {saved}" if saved else "no checkpoint was written"
        resume = f"; resume with: {resume_command(saved, out)}" if saved else ""
        raise TrainingStopped(
            f"{final.stopped_by} at step {trainer.global_step}; {where}{resume}", EXIT_CODES[final.stopped_by]
        )
    return metrics
