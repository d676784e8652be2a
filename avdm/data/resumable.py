"""A map-style DataLoader that Lightning can checkpoint and resume mid-epoch, exactly.

Lightning saves ``state_dict()`` of any train dataloader that has one and restores it on resume.
The order of epoch ``e`` is a permutation seeded by ``(seed, e)``; the state is the epoch and the
number of batches the training loop has consumed, and a resumed loader skips those.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochPermutationSampler(Sampler[int]):
    """Indices of epoch ``epoch`` (a seeded permutation, or in order), from position ``start``."""

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            rng = torch.Generator().manual_seed(self.seed * 9_973 + self.epoch)
            order = torch.randperm(self.num_items, generator=rng)
        else:
            order = torch.arange(self.num_items)
        yield from order[self.start :].tolist()

    def __len__(self) -> int:
        return self.num_items - self.start


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over an :class:`EpochPermutationSampler` with ``state_dict`` / ``load_state_dict``.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch (incomplete last batches are dropped).
        seed: seed of the per-epoch permutations.
        shuffle: permute each epoch (True) or read in order.
        **kwargs: further ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ...).
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True, **kwargs: Any
    ) -> None:
        sampler = EpochPermutationSampler(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._epoch, self._yielded = 0, 0

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochPermutationSampler = self.sampler  # type: ignore[assignment]
        sampler.epoch, sampler.start = self._epoch, self._yielded * self.batch_size
        for batch in super().__iter__():
            self._yielded += 1
            yield batch
        self._epoch, self._yielded = self._epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """The epoch and the batches of it handed to the training loop (Lightning fetches sized
        loaders without look-ahead, so these are the batches trained on; tests/test_module.py checks it)."""
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch, self._yielded = int(state["epoch"]), int(state["batches"])
