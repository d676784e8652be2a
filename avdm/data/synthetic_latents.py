"""Procedural latent clips with captions, for CPU runs that need no dataset or VAE.

Each clip is a Gaussian blob in latent space whose channel signature is set by a colour word and
which moves across the frames in the direction of its caption ("a red ball moving left"). It is
cheap, deterministic per index, and has structure a generator can learn (colour, motion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import Dataset

from avdm.config_schema import check_parameters
from avdm.data.resumable import ResumableDataLoader

COLOURS: dict[str, tuple[float, ...]] = {
    "red": (1.0, -0.5, -0.5, 0.3),
    "green": (-0.5, 1.0, -0.5, -0.3),
    "blue": (-0.5, -0.5, 1.0, 0.0),
    "yellow": (0.7, 0.7, -0.8, 0.5),
}
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (0.0, -1.0),
    "right": (0.0, 1.0),
    "up": (-1.0, 0.0),
    "down": (1.0, 0.0),
}


class SyntheticLatentDataset(Dataset):
    """``num_samples`` clips; item ``i`` is ``{"latents": (C, F, H, W), "captions": str}``, fixed by seed."""

    def __init__(self, latent_shape: Sequence[int], num_samples: int = 256, seed: int = 0) -> None:
        if len(latent_shape) != 4 or min(latent_shape) < 1:
            raise ValueError(
                f"data.latent_shape must be [C, F, H, W], positive sizes; got {list(latent_shape)}"
            )
        check_parameters(self, "data", num_samples=num_samples)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.num_samples, self.seed = num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        c, f, h, w = self.latent_shape
        colour = list(COLOURS)[int(torch.randint(len(COLOURS), (1,), generator=g))]
        direction = list(DIRECTIONS)[int(torch.randint(len(DIRECTIONS), (1,), generator=g))]
        signature = torch.tensor([COLOURS[colour][i % 4] for i in range(c)])
        dy, dx = DIRECTIONS[direction]
        start = torch.rand(2, generator=g) * 0.4 + 0.3
        speed = 0.4 / max(f - 1, 1)
        ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        frames = []
        for j in range(f):
            cy, cx = start[0] + dy * speed * j, start[1] + dx * speed * j
            blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 0.12**2))
            frames.append(signature[:, None, None] * blob * 1.5)
        latents: Tensor = torch.stack(frames, dim=1) + 0.05 * torch.randn(c, f, h, w, generator=g)
        return {"latents": latents, "captions": f"a {colour} ball moving {direction}"}


class SyntheticLatentDataModule(L.LightningDataModule):
    """Batches of :class:`SyntheticLatentDataset`: ``latents (B, C, F, H, W)``, ``captions list[str]``."""

    def __init__(
        self,
        latent_shape: Sequence[int],
        num_samples: int = 256,
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_parameters(self, "data", batch_size=batch_size, num_workers=num_workers)
        self.dataset = SyntheticLatentDataset(latent_shape, num_samples, seed)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader.for_trainer(
            self.dataset, self.trainer, self.batch_size, self.seed, num_workers=self.num_workers
        )
