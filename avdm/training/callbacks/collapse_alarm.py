"""The collapse alarm (``callbacks.collapse``): a warning, or a checkpoint and a stop, when the ``diag/``
values of :class:`~avdm.training.callbacks.diagnostics.CollapseDiagnostics` cross their thresholds.

Thresholds on diversity, temporal change, flicker and colourfulness are ratios to the teacher's value
from the same noise (1 = as the teacher), so one setting holds across resolutions and teachers; the
saturation threshold is the fraction of pixel values at the range limits beyond the teacher's (a
teacher of dark scenes has many at -1 already).

Defaults, set from measured runs of the shapes teacher (README, "Seeing collapse"): the main job stays
within 0.9-1.25 of the teacher's flicker over its 220 steps while the GAN-only ablation, whose objects
jump, passes 1.5 from step 140 on; nothing else separated those two runs.

Pixel values are judged where the run has a VAE, latents otherwise. A symptom fires after ``patience``
checks in a row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch

from avdm.errors import ConfigError
from avdm.training.callbacks.diagnostics import CollapseDiagnostics
from avdm.training.callbacks.final_checkpoint import checkpoint_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    key: str  # the threshold's config key
    value: str  # the diag/ value it reads; {space} is pixel or latent
    bound: Literal["min", "max"]
    symptom: str


CHECKS = (
    Check(
        "min_diversity", "ratio/{space}/diversity", "min", "lost diversity (samples of one prompt look alike)"
    ),
    Check("min_temporal_change", "ratio/{space}/temporal_change", "min", "static video"),
    Check("max_flicker", "ratio/{space}/flicker", "max", "flicker (frames jump away and back)"),
    Check("min_colourfulness", "ratio/pixel/colourfulness", "min", "lost colour (grey samples)"),
    Check(
        "max_saturation",
        "excess/pixel/saturation",
        "max",
        "over-saturation (more pixels at the range limits)",
    ),
)


class CollapseAlarm(L.Callback):
    """Judge every diagnostics check; on a symptom, warn (one line with the word "collapse") or, with
    ``action="stop"``, save ``<checkpoints>/collapse-step=N.ckpt`` and stop training.

    Args:
        min_diversity, min_temporal_change, min_colourfulness: lowest ratio to the teacher's value
            (``None``: not checked).
        max_flicker: highest ratio to the teacher's flicker (``None``: not checked).
        max_saturation: highest fraction of pixel values at the range limits beyond the teacher's
            (``None``: not checked).
        patience: checks in a row a symptom must show before the alarm fires.
        start_step: generator steps before which nothing is judged.
        action: ``warn`` or ``stop``.
    """

    def __init__(
        self,
        min_diversity: float | None = 0.3,
        min_temporal_change: float | None = 0.3,
        max_flicker: float | None = 1.5,
        min_colourfulness: float | None = 0.5,
        max_saturation: float | None = 0.15,
        patience: int = 2,
        start_step: int = 0,
        action: Literal["warn", "stop"] = "warn",
    ) -> None:
        if action not in ("warn", "stop"):
            raise ValueError(f"callbacks.collapse.action={action!r}: expected one of warn, stop")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"callbacks.collapse.patience={patience!r}: expected an integer >= 1")
        self.thresholds = {
            "min_diversity": min_diversity,
            "min_temporal_change": min_temporal_change,
            "max_flicker": max_flicker,
            "min_colourfulness": min_colourfulness,
            "max_saturation": max_saturation,
        }
        for key, value in self.thresholds.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise ValueError(f"callbacks.collapse.{key}={value!r}: expected a number >= 0 or null")
        self.patience, self.start_step, self.action = patience, start_step, action
        self.streaks: dict[str, int] = {}
        self.fired: list[dict[str, Any]] = []
        self.stopped = False
        self._judged = -1.0
        self._diagnostics: CollapseDiagnostics | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        found = [cb for cb in trainer.callbacks if isinstance(cb, CollapseDiagnostics)]
        if not found:
            raise ConfigError(
                "callbacks.collapse needs callbacks.diagnostics (the diag/ values it judges); "
                "set callbacks.diagnostics or callbacks.collapse=null"
            )
        self._diagnostics = found[0]

    def violations(self, values: dict[str, float]) -> list[tuple[Check, str, float, float]]:
        """``(check, value name, value, threshold)`` of every threshold ``values`` cross."""
        space = "pixel" if any(k.startswith("diag/pixel/") for k in values) else "latent"
        out = []
        for check in CHECKS:
            threshold = self.thresholds[check.key]
            name = "diag/" + check.value.format(space=space)
            if threshold is None or name not in values:
                continue
            value = values[name]
            if (value < threshold) if check.bound == "min" else (value > threshold):
                out.append((check, name, value, threshold))
        return out

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        latest = self._diagnostics.latest if self._diagnostics is not None else None
        if latest is None or latest["step"] <= self._judged:
            return
        self._judged = step = latest["step"]
        if step < self.start_step:
            return
        found = {
            check.key: (check, name, value, threshold)
            for check, name, value, threshold in self.violations(latest)
        }
        self.streaks = {key: self.streaks.get(key, 0) + 1 for key in found}
        firing = [found[key] for key, streak in self.streaks.items() if streak == self.patience]
        # Every rank holds the same diagnostics; agreeing keeps a stop collective.
        flag = torch.tensor(float(bool(firing)), device=pl_module.device)
        if float(trainer.strategy.reduce(flag, reduce_op="max")) == 0.0:
            return
        lines = [self._describe(step, *item) for item in firing]
        saved = None
        if self.action == "stop":
            saved = checkpoint_folder(trainer) / f"collapse-step={int(step)}.ckpt"
            trainer.save_checkpoint(saved)
            trainer.should_stop = True
            self.stopped = True
        for line in lines:
            tail = f"; saved {saved}, training stopped" if saved else " (callbacks.collapse.action=warn)"
            if trainer.is_global_zero:
                log.warning("%s%s", line, tail)
            self.fired.append({"step": int(step), "message": line + tail})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"diag/collapse_alarm": 1.0, "step/generator": step}, step=trainer.global_step
                )

    @staticmethod
    def _describe(step: float, check: Check, name: str, value: float, threshold: float) -> str:
        relation = "<" if check.bound == "min" else ">"
        scale = " of the teacher's" if "/ratio/" in name else ""
        return (
            f"collapse at generator step {int(step)}: {check.symptom}: {name}={value:.3g}{scale} "
            f"{relation} callbacks.collapse.{check.key}={threshold:g}"
        )

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` keeps: the alarms fired, and ``stopped_by`` when one stopped the run."""
        out: dict[str, Any] = {"collapse_alarms": self.fired}
        if self.stopped:
            out["stopped_by"] = "collapse"
        return out
