"""A map-style DataLoader that Lightning can checkpoint and resume mid-epoch, exactly, on any number of ranks.

The sampler is a ``DistributedSampler`` (so Lightning does not replace it under DDP): epoch ``e`` is a
permutation seeded by ``(seed, e)``, sharded across ranks with no duplicates. The loader's state is its
epoch and the number of batches of that epoch it has handed out; Lightning saves ``state_dict()`` of the
train dataloader in checkpoints and restores it on resume, and the resumed loader skips those batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (drop_last) whose next pass starts at ``start`` in this rank's shard."""

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ResumableDistributedSampler` with ``state_dict`` / ``load_state_dict``.

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch and rank (incomplete last batches are dropped).
        seed: seed of the per-epoch permutations (the same on every rank).
        shuffle: permute each epoch (True) or read in order.
        num_replicas, rank: the data-parallel world (Lightning's ``trainer.world_size`` / ``global_rank``).
        **kwargs: further ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ...).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        **kwargs: Any,
    ) -> None:
        sampler = ResumableDistributedSampler(dataset, num_replicas, rank, shuffle, seed)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._epoch, self._yielded = 0, 0

    @classmethod
    def for_trainer(
        cls,
        dataset: Dataset,
        trainer: Any,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> ResumableDataLoader:
        """This rank's loader in ``trainer``'s data-parallel world (one process when ``trainer`` is None)."""
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return cls(
            dataset,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            num_replicas=world,
            rank=rank,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            **kwargs,
        )

    def __iter__(self) -> Iterator[Any]:
        sampler: ResumableDistributedSampler = self.sampler  # type: ignore[assignment]
        if self._yielded >= len(sampler) // self.batch_size:
            # Lightning takes exactly len(self) batches and never resumes the generator past the last
            # one, so the bookkeeping after the loop below does not run: roll over here instead.
            self._epoch, self._yielded = self._epoch + 1, 0
        # The loader keeps its own epoch: Lightning's set_epoch counts an epoch cut short by max_steps
        # as finished when a checkpoint is written after fit() returns.
        sampler.set_epoch(self._epoch)
        sampler.start = self._yielded * self.batch_size
        for batch in super().__iter__():
            self._yielded += 1
            yield batch
        self._epoch, self._yielded = self._epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """Batches of the current epoch handed to the training loop (Lightning fetches sized loaders
        without look-ahead, so these are the batches trained on; tests/test_module.py checks it)."""
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch, self._yielded = int(state["epoch"]), int(state["batches"])
