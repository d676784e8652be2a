"""Timing pieces the benchmarks share: a warmed-up mean of a callable, and a per-iteration clock."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning as L


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def timed_median(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call: robust to the odd slow
    call on a shared machine."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class IterationClock(L.Callback):
    """Seconds of every training iteration of a :class:`~avdm.training.distillation.DistillationModule` (batch
    start to batch end: data loading excluded), with whether it updated the generator and its
    backward-simulation index ``k`` (the module's own draw). ``rows``: ``(generator_step, k, seconds)``."""

    def __init__(self) -> None:
        self.rows: list[tuple[bool, int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        it = int(pl_module.iterations)
        self._k, self._gen = pl_module.simulation_step(it), pl_module.updates_generator(it)
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # noqa: ANN001
        self.rows.append((self._gen, self._k, time.perf_counter() - self._t))


def quiet_trainer(max_steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    """A CPU trainer that writes nothing and prints no bars."""
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
