"""What the data module counted (bad videos skipped or repaired), logged beside the losses."""

from __future__ import annotations

from typing import Any

import lightning as L


class BadVideoCounts(L.Callback):
    """Log the data module's count of skipped or repaired videos per reason (``data/bad_videos/REASON``,
    this rank's files) after every batch; data modules without ``bad_video_counts()`` log nothing."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "bad_video_counts"):
            counts = datamodule.bad_video_counts()
            pl_module.log_dict(
                {f"data/bad_videos/{reason}": float(n) for reason, n in counts.items()}, batch_size=1
            )
