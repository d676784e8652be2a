"""Log the memory plan of the run at its start: one table printed on rank zero, ``plan/<role>`` bytes as
hyperparameters of every logger.

Computed from the module already built (no second build) by the analytic model of
:mod:`avdm.training.memory.plan`: no forward pass, no randomness drawn, no weight touched, so training is
unchanged. The same table as ``python -m avdm.plan`` with the same config.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from avdm.training.memory.plan import MemoryPlan, format_table, plan_module, settings_from_config

log = logging.getLogger("avdm.train")


class MemoryPlanLog(L.Callback):
    """At fit start: the plan of ``cfg`` over the trained module, logged once."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.plan: MemoryPlan | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "generator") or not hasattr(pl_module, "losses"):
            return  # not a distillation module (the VAE stage)
        import torch

        memory = None
        if pl_module.device.type == "cuda":
            memory = int(torch.cuda.get_device_properties(pl_module.device).total_memory)
        try:
            self.plan = plan_module(pl_module, settings_from_config(self.cfg, pl_module), memory)
        except Exception as err:  # a diagnostic: a module it does not know never stops a training run
            log.warning("memory plan not computed: %s: %s", type(err).__name__, err)
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(self.plan.flat())
        self._print(self.plan)

    @rank_zero_only
    def _print(self, plan: MemoryPlan) -> None:
        log.info("memory plan (analytic; python -m avdm.plan prints the same):\n%s", format_table(plan))
