"""The LightningDataModule shared by datasets of stored latents (latent cache, SynVid)."""

from __future__ import annotations

import lightning as L

from avdm.config_schema import check_parameters
from avdm.data.resumable import ResumableDataLoader
from avdm.errors import AvdmUserError, ConfigError


class StoredLatentDataModule(L.LightningDataModule):
    """Serves a map-style dataset of stored latents, checked against the model's latent shape.

    Subclasses build ``self.dataset`` (with ``.root``, ``.latent_shape`` and ``len``) and call
    :meth:`_configure`.

    Class attributes: ``what`` names an item in messages ("clips"); ``mismatch_hint`` says how to fix
    a latent shape that differs from the model's.
    """

    what = "items"
    mismatch_hint = "match the model config to the data"

    def _configure(self, batch_size: int, num_workers: int, seed: int) -> None:
        check_parameters(self, "data", batch_size=batch_size, num_workers=num_workers)
        if len(self.dataset) < batch_size:
            count, root = len(self.dataset), self.dataset.root
            raise ConfigError(f"data.batch_size={batch_size} exceeds the {count} {self.what} in '{root}'")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer else None
        model_shape = getattr(module, "latent_shape", None)
        if model_shape is not None and tuple(model_shape) != tuple(self.dataset.latent_shape):
            raise AvdmUserError(
                f"'{self.dataset.root}' holds latents {list(self.dataset.latent_shape)} but the model's are "
                f"{list(model_shape)}; {self.mismatch_hint}"
            )

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader.for_trainer(
            self.dataset, self.trainer, self.batch_size, self.seed, num_workers=self.num_workers
        )
