"""The progress bar of a distillation run: batches per generator step counted right."""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import TQDMProgressBar


class IterationProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the right total: ``max_steps`` counts generator steps, and each
    takes ``critic_steps_per_generator_step`` batches (iterations) of the data."""

    @property
    def total_train_batches(self) -> int | float:
        # Lightning caps an epoch at max_steps batches, which holds only with one optimizer step per batch.
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 0:
            return super().total_train_batches
        iterations = max_steps * getattr(self.trainer.lightning_module, "critic_every", 1)
        try:
            per_epoch = len(self.trainer.train_dataloader)
        except TypeError:  # iterable datasets have no length
            per_epoch = math.inf
        return min(per_epoch, iterations)
