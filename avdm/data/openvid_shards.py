"""OpenVid-1M clips from WebDataset-style tar shards: :class:`OpenVidShardDataset`, an iterable dataset
that deals seeded shard orders to ranks and workers, decodes one seeded clip per sample, and saves and
restores how far each reader got.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from avdm.data.openvid_items import (
    BAD_KEY,
    POSITION_KEY,
    BadVideoTally,
    Report,
    check_clip_args,
    in_worker,
    mix_seed,
    repair_action,
)
from avdm.data.openvid_sources import expand_shards, iter_tar_samples
from avdm.data.video_io import BadVideoError, read_clip
from avdm.errors import ConfigError

log = logging.getLogger("avdm.data.openvid")  # the logger OpenVid's warnings have always used


class OpenVidShardDataset(IterableDataset):
    """OpenVid-1M from WebDataset-style tar shards of ``NAME.mp4`` + ``NAME.txt`` (caption) pairs.

    One iteration is one epoch. Shards are put in an order seeded by ``(seed, epoch)`` and dealt to
    the ``world_size * workers`` readers (``rank`` given, the worker from ``get_worker_info``):
    reader ``s`` reads shards ``s, s + n, s + 2n, ...``, so readers never share a sample and together
    read every sample once. For equal work per rank, use a shard count divisible by ``world_size *
    workers`` and equally full shards. Items are those of
    :class:`~avdm.data.openvid_folder.OpenVidDataset` plus ``position``; the clip's start frame is
    seeded by ``(seed, epoch, shard, sample)``.

    ``state_dict()`` holds the epoch and, per reader, the shard and the number of its samples consumed;
    after ``load_state_dict`` the next iteration yields exactly the samples not yet consumed.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        num_frames: int = 16,
        stride: int = 4,
        resolution: int = 512,
        seed: int = 0,
        on_bad_video: str = "skip",
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.too_short = check_clip_args(num_frames, stride, resolution, on_bad_video)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.shards = expand_shards(shards)
        self.num_frames, self.stride, self.resolution = num_frames, stride, resolution
        self.seed, self.on_bad_video, self.shuffle = seed, on_bad_video, shuffle
        self.rank, self.world_size = rank, world_size
        self.bad_videos = BadVideoTally()
        self.epoch, self.num_readers = 0, 0
        self.positions: dict[int, tuple[int, int]] = {}  # reader -> (shard position, samples consumed)

    def shard_order(self, epoch: int) -> list[str]:
        """The epoch's shard order (a seeded permutation, or sorted without ``shuffle``)."""
        if not self.shuffle:
            return list(self.shards)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        readers, reader = self.world_size * workers, self.rank * workers + worker
        if self.positions and self.num_readers != readers:
            raise ConfigError(
                f"the data state was saved with {self.num_readers} readers (ranks x workers) but this run "
                f"has {readers}; resume with the same devices and data.num_workers"
            )
        epoch, resume = self.epoch, self.positions.get(reader)
        self.num_readers = readers
        order = self.shard_order(epoch)
        pending: list[Report] = []
        for p in range(reader, len(order), readers):
            if resume is not None and p < resume[0]:
                continue
            done = resume[1] if resume is not None and p == resume[0] else 0
            for j, item in self._read_shard(order[p], done, mix_seed(self.seed, epoch, p), pending):
                position = (reader, p, j + 1)
                self.positions[reader] = (p, j + 1)
                yield {**item, BAD_KEY: list(pending), POSITION_KEY: (readers, *position)}
                pending.clear()
        if not in_worker():
            self.end_epoch()

    def _read_shard(
        self, shard: str, skip: int, seed: int, pending: list[Report]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        j = -1
        try:
            for j, (key, files) in enumerate(iter_tar_samples(shard)):
                if j < skip:
                    continue
                name = f"{Path(shard).name}:{key}.mp4"
                g = torch.Generator().manual_seed(mix_seed(seed, j))
                try:
                    clip = read_clip(
                        files.get("mp4", b""),
                        self.num_frames,
                        self.stride,
                        self.resolution,
                        generator=g,
                        too_short=self.too_short,
                        name=name,
                    )
                except BadVideoError as err:
                    reason = "missing" if "mp4" not in files else err.reason
                    self._report(pending, (name, reason, "skipped"))
                    continue
                if clip.repaired:
                    self._report(pending, (name, "too_short", repair_action(self.too_short, "too_short")))
                caption = files.get("txt", b"").decode("utf-8", errors="replace").strip()
                yield j, {"pixels": clip.pixels, "captions": caption}
        except (tarfile.TarError, OSError) as err:
            log.warning("OpenVid: shard %s unreadable after %d samples (%s); moving on", shard, j + 1, err)

    def _report(self, pending: list[Report], report: Report) -> None:
        pending.append(report)
        if not in_worker():
            self.bad_videos.record(*report)

    def end_epoch(self) -> None:
        """Start the next epoch from its beginning."""
        self.epoch, self.positions = self.epoch + 1, {}

    def note_position(self, position: Sequence[int]) -> None:
        """Record ``(readers, reader, shard position, samples consumed)`` of a consumed item."""
        readers, reader, p, done = (int(v) for v in position)
        self.num_readers, self.positions[reader] = readers, (p, done)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "num_readers": self.num_readers,
            "positions": [[r, p, done] for r, (p, done) in sorted(self.positions.items())],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.num_readers = int(state["epoch"]), int(state["num_readers"])
        self.positions = {int(r): (int(p), int(done)) for r, p, done in state["positions"]}
