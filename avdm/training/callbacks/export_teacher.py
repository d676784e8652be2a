"""Teacher training's stage hand-over: the trained model written as a diffusers folder at the end."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from avdm.errors import ConfigError


class ExportTeacher(L.Callback):
    """At the end of training, write the trained model as a diffusers folder (``out_dir``: an AnimateDiff
    pipeline, or a flow transformer's folders), the input of the next stage of teacher training
    (``model.pretrained.base_model=out_dir``). ``include_vae: false`` leaves out a VAE the teacher reuses
    from another folder (``model.pretrained.vae``).

    Works with any module that has ``pipeline_parts()``: a
    :class:`~avdm.training.distillation.DistillationModule` or an
    :class:`~avdm.training.autoencoder.AutoencoderModule`.
    """

    def __init__(self, out_dir: str, include_vae: bool = True) -> None:
        self.out_dir, self.include_vae = Path(out_dir), include_vae

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from avdm.training.sharding import is_sharded

        if is_sharded(pl_module):  # refused before training, not after it
            raise ConfigError(
                "callbacks.export writes a teacher stage from unsharded weights at the end of training; with "
                "trainer=fsdp2 they are sharded: train teacher stages with trainer=gpu (DDP) or trainer=cpu"
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from avdm.export import export_teacher

        parts = pl_module.pipeline_parts()
        export_teacher(self.out_dir, **parts, include_vae=self.include_vae)
        print(f"Wrote the teacher pipeline to {self.out_dir}")
