"""OpenVid-1M real clips: a CSV + folder of mp4 files, or WebDataset-style tar shards.

Items and batches hold pixels, not latents (the training module encodes them with the VAE):
an item is ``{"pixels": (3, F, H, W) float in [-1, 1], "captions": str}``, a batch
``{"pixels": (B, 3, F, H, W), "captions": list[str]}``.

Bad files never stop training. Each is counted once under its reason (see
:data:`avdm.data.video_io.REASONS`) and logged once with its name; ``on_bad_video`` says what
replaces it: ``skip`` draws another video, ``loop`` / ``pad`` repair a too-short video by looping
its frames / repeating its last frame (other bad videos are skipped under every policy).

Dataloader workers cannot update the main process's objects, so items carry what they saw
(``bad_videos``, and for shards ``position``) and the loaders here strip these keys from batches
and keep the books in the main process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader

from avdm.config_schema import check_parameters
from avdm.data.openvid_folder import OpenVidDataset
from avdm.data.openvid_items import BAD_KEY, POSITION_KEY, BadVideoTally, check_clip_args, collate_clips
from avdm.data.openvid_shards import OpenVidShardDataset
from avdm.data.resumable import ResumableDataLoader
from avdm.errors import ConfigError


class _ClipLoader(ResumableDataLoader):
    """:class:`ResumableDataLoader` over :class:`OpenVidDataset` that keeps the bad-video books."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in super().__iter__():
            reports = batch.pop(BAD_KEY, [])
            if self.num_workers > 0:
                self.dataset.bad_videos.record_all(reports)
            yield batch


class ShardLoader(DataLoader):
    """``DataLoader`` over :class:`OpenVidShardDataset` with ``state_dict`` / ``load_state_dict``.

    The state is the dataset's, as of the batches handed out (Lightning fetches one batch ahead from
    loaders without a length, so a resumed run skips that one batch). Under DDP ``state_dict`` gathers
    every rank's readers, so every rank must call it (Lightning's checkpointing does).
    """

    def __init__(
        self, dataset: OpenVidShardDataset, batch_size: int, num_workers: int = 0, **kwargs: Any
    ) -> None:
        # Workers get a fresh copy of the dataset (its epoch and resume point) at every iteration.
        kwargs.pop("persistent_workers", None)
        super().__init__(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_clips,
            drop_last=True,
            **kwargs,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset: OpenVidShardDataset = self.dataset  # type: ignore[assignment]
        for batch in super().__iter__():
            reports, position = batch.pop(BAD_KEY, []), batch.pop(POSITION_KEY)
            if self.num_workers > 0:
                dataset.bad_videos.record_all(reports)
                dataset.note_position(position)
            yield batch
        if self.num_workers > 0:
            dataset.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        state = self.dataset.state_dict()  # type: ignore[attr-defined]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            state["positions"] = sorted(pos for s in states for pos in s["positions"])
            state["num_readers"] = max(s["num_readers"] for s in states)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)  # type: ignore[attr-defined]


class OpenVidDataModule(L.LightningDataModule):
    """OpenVid-1M clips for training: from ``csv`` + ``video_dir``, or from tar ``shards``.

    Batches: ``{"pixels": (batch_size, 3, num_frames, resolution, resolution) in [-1, 1],
    "captions": list[str]}``. :meth:`bad_video_counts` gives this rank's bad files per reason.
    """

    def __init__(
        self,
        csv: str | None = None,
        video_dir: str | None = None,
        shards: str | Sequence[str] | None = None,
        num_frames: int = 16,
        stride: int = 4,
        resolution: int = 512,
        batch_size: int = 2,
        num_workers: int = 2,
        seed: int = 0,
        on_bad_video: str = "skip",
    ) -> None:
        super().__init__()
        if (csv is None) == (shards is None):
            raise ConfigError("set exactly one of data.csv (with data.video_dir) and data.shards")
        if csv is not None and video_dir is None:
            raise ConfigError("data.video_dir must be set with data.csv (the folder of OpenVid mp4 files)")
        check_parameters(self, "data", batch_size=batch_size, num_workers=num_workers)
        check_clip_args(num_frames, stride, resolution, on_bad_video)
        self.csv, self.video_dir, self.shards = csv, video_dir, shards
        self.clip_args = {
            "num_frames": num_frames,
            "stride": stride,
            "resolution": resolution,
            "seed": seed,
            "on_bad_video": on_bad_video,
        }
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.dataset: OpenVidDataset | OpenVidShardDataset | None = None

    def _world(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        if self.csv is not None:
            self.dataset = OpenVidDataset(self.csv, self.video_dir, **self.clip_args)  # type: ignore[arg-type]
        else:
            world, rank = self._world()
            self.dataset = OpenVidShardDataset(
                self.shards,
                rank=rank,
                world_size=world,
                **self.clip_args,  # type: ignore[arg-type]
            )

    def train_dataloader(self) -> ResumableDataLoader | ShardLoader:
        self.setup("fit")
        if isinstance(self.dataset, OpenVidShardDataset):
            return ShardLoader(self.dataset, self.batch_size, num_workers=self.num_workers)
        world, rank = self._world()
        return _ClipLoader(
            self.dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            persistent_workers=self.num_workers > 0,
        )

    def bad_video_counts(self) -> dict[str, int]:
        """Bad files found on this rank so far, per reason (every reason present)."""
        return BadVideoTally().counts() if self.dataset is None else self.dataset.bad_videos.counts()
