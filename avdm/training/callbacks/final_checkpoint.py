"""How a run ends: the final weights always in ``last.ckpt``, and a clean stop on SIGINT / SIGTERM.

Lightning's ``ModelCheckpoint(every_n_train_steps=N)`` writes ``last.ckpt`` only every N steps, so a
run of 220 steps with N = 100 ended with the weights of step 200 in it. And on SIGTERM Lightning stops
at the next batch with exit status 0 and no checkpoint of the last steps. :class:`FinalCheckpoint`
writes ``last.ckpt`` when training ends at a step the interval missed, and on SIGINT or SIGTERM it
writes it at the next step boundary (every rank agrees on that step) and stops;
:func:`avdm.train.fit` then reports the step and the resume command and exits 130 / 143.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def checkpoint_folder(trainer: L.Trainer) -> Path:
    """Where the run's checkpoints go: the ``ModelCheckpoint``'s folder, else
    ``<default_root_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


class FinalCheckpoint(L.Callback):
    """Write ``<dirpath>/last.ckpt`` at the end of training and at a requested stop.

    Args:
        dirpath: folder of ``last.ckpt``; ``None``: the ``ModelCheckpoint``'s folder, else
            ``<default_root_dir>/checkpoints``.

    After ``fit``: ``stopped_by`` is ``"SIGINT"`` / ``"SIGTERM"`` or ``None``; ``saved`` the file
    written last (``None``: none needed) and ``saved_step`` its global step.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.stopped_by: str | None = None
        self.saved: Path | None = None
        self.saved_step: int | None = None
        self._sigint = False
        self._previous_sigint: Any = None

    # --- signals ---------------------------------------------------------------------------------
    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._sigint:  # a second Ctrl+C: stop now, as Python would
            raise KeyboardInterrupt
        self._sigint = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: keep Python's handler
            self._previous_sigint = None

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _requested(self, trainer: L.Trainer) -> str | None:
        """The stop request of any rank (SIGTERM before SIGINT), the same answer on every rank."""
        local = 2 if getattr(trainer, "received_sigterm", False) else (1 if self._sigint else 0)
        if trainer.world_size > 1:
            flag = torch.tensor(float(local), device=trainer.strategy.root_device)
            local = int(trainer.strategy.reduce(flag, reduce_op="max"))
        return {0: None, 1: "SIGINT", 2: "SIGTERM"}[local]

    # --- checkpoints -----------------------------------------------------------------------------
    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath is not None else checkpoint_folder(trainer)

    def _already_saved(self, trainer: L.Trainer) -> bool:
        if self.saved_step == trainer.global_step:
            return True
        callback = trainer.checkpoint_callback
        return (
            isinstance(callback, ModelCheckpoint)
            and bool(callback.save_last)
            and getattr(callback, "_last_global_step_saved", -1) == trainer.global_step
            and bool(callback.last_model_path)
        )

    def _save(self, trainer: L.Trainer) -> None:
        if self._already_saved(trainer):
            callback = trainer.checkpoint_callback
            if self.saved is None and isinstance(callback, ModelCheckpoint) and callback.last_model_path:
                self.saved, self.saved_step = Path(callback.last_model_path), trainer.global_step
            return
        path = self._folder(trainer) / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        self.saved, self.saved_step = path, trainer.global_step
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            callback.last_model_path = str(path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        requested = self._requested(trainer)
        if requested is None:
            return
        self.stopped_by = requested
        self._save(trainer)
        trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()
        self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()  # no checkpoint here: the weights of a failed step may be poisoned
