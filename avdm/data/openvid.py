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

import csv
import glob
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from avdm.data.resumable import ResumableDataLoader
from avdm.data.video_io import REASONS, BadVideoError, TooShort, read_clip
from avdm.errors import AvdmUserError, ConfigError

log = logging.getLogger(__name__)

POLICIES = ("skip", "loop", "pad")
BAD_KEY, POSITION_KEY = "bad_videos", "position"
MAX_DRAWS = 100
Report = tuple[str, str, str]  # (file name, reason, action taken)


class DataSourceError(AvdmUserError):
    """The CSV, video folder or shards named in the data config are missing or unreadable."""


def read_openvid_csv(csv_path: str | Path) -> list[tuple[str, str]]:
    """``(video file name, caption)`` rows of an OpenVid CSV; other columns are ignored."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataSourceError(f"OpenVid CSV not found: {path} (set data.csv to the OpenVid-1M CSV file)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        missing = [col for col in ("video", "caption") if col not in fields]
        if missing:
            raise DataSourceError(
                f"OpenVid CSV {path} (data.csv) lacks the column(s) {missing}; its header is {fields}"
            )
        reader.fieldnames = fields
        return [(row["video"].strip(), (row["caption"] or "").strip()) for row in reader if row["video"]]


class BadVideoTally:
    """Bad files seen so far: each counted once under its reason and logged once with its name."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def record(self, name: str, reason: str, action: str) -> None:
        if name in self.files:
            return
        self.files[name] = reason
        log.warning("OpenVid: bad video %s (%s): %s", name, reason, action)

    def record_all(self, reports: Sequence[Report]) -> None:
        for report in reports:
            self.record(*report)

    def counts(self) -> dict[str, int]:
        """Bad files per reason, every reason present (zero if none)."""
        found = Counter(self.files.values())
        return {reason: found[reason] for reason in REASONS}


class _Strings:
    """Many strings in one byte buffer: dataloader workers share it without copy-on-write of refcounts."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.offsets = np.cumsum([0] + [len(b) for b in encoded])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")


def _check_args(num_frames: int, stride: int, resolution: int, on_bad_video: str) -> TooShort:
    for key, value in (("num_frames", num_frames), ("stride", stride), ("resolution", resolution)):
        if value < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {value}")
    if on_bad_video not in POLICIES:
        raise ConfigError(f"data.on_bad_video must be one of {', '.join(POLICIES)}; got {on_bad_video!r}")
    return "error" if on_bad_video == "skip" else on_bad_video  # type: ignore[return-value]


def _action(too_short: TooShort, reason: str) -> str:
    if reason == "too_short" and too_short != "error":
        return "looped its frames" if too_short == "loop" else "padded with its last frame"
    return "skipped"


def _seed(*parts: int) -> int:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return seed


def _in_worker() -> bool:
    return get_worker_info() is not None


class OpenVidDataset(Dataset):
    """OpenVid-1M from its CSV (``video``, ``caption`` columns) and a folder of mp4 files.

    Item ``i`` is ``{"pixels": (3, num_frames, resolution, resolution) in [-1, 1], "captions": str,
    "bad_videos": list of (name, reason, action)}``. The clip's start frame and any replacement draw
    (``on_bad_video="skip"``) come from a generator seeded by ``(seed, i)``, so an item is the same in
    every epoch, process and run. Batch items with :func:`collate_clips`.
    """

    def __init__(
        self,
        csv: str | Path,
        video_dir: str | Path,
        num_frames: int = 16,
        stride: int = 4,
        resolution: int = 512,
        seed: int = 0,
        on_bad_video: str = "skip",
    ) -> None:
        self.too_short = _check_args(num_frames, stride, resolution, on_bad_video)
        rows = read_openvid_csv(csv)
        self.video_dir = Path(video_dir)
        if not self.video_dir.is_dir():
            raise DataSourceError(
                f"OpenVid video folder not found: {self.video_dir} (set data.video_dir to its mp4 folder)"
            )
        if not rows:
            raise DataSourceError(f"OpenVid CSV {csv} (data.csv) has no rows")
        self.videos, self.captions = _Strings([r[0] for r in rows]), _Strings([r[1] for r in rows])
        self.num_frames, self.stride, self.resolution = num_frames, stride, resolution
        self.seed, self.on_bad_video = seed, on_bad_video
        self.bad_videos = BadVideoTally()
        self._known_bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.videos)

    def bad_reason(self, index: int) -> str | None:
        """Why item ``index``'s own video was unusable (once the item has been read), else ``None``."""
        return self._known_bad.get(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(_seed(self.seed, index))
        reports: list[Report] = []
        i = index
        for _ in range(MAX_DRAWS):
            if i not in self._known_bad:
                try:
                    item = self._load(i, g, reports)
                    return {**item, BAD_KEY: reports}
                except BadVideoError as err:
                    self._known_bad[i] = err.reason
                    self._report(reports, (self.videos[i], err.reason, "skipped"))
            i = int(torch.randint(len(self), (1,), generator=g))
        raise DataSourceError(
            f"no usable video in {MAX_DRAWS} draws from data.video_dir {self.video_dir}; "
            "run `python -m avdm.data.check CSV VIDEO_DIR` to list the bad files"
        )

    def _load(self, i: int, g: torch.Generator, reports: list[Report]) -> dict[str, Any]:
        name = self.videos[i]
        clip = read_clip(
            self.video_dir / name,
            self.num_frames,
            self.stride,
            self.resolution,
            generator=g,
            too_short=self.too_short,
            name=name,
        )
        if clip.repaired:
            self._report(reports, (name, "too_short", _action(self.too_short, "too_short")))
        return {"pixels": clip.pixels, "captions": self.captions[i]}

    def _report(self, reports: list[Report], report: Report) -> None:
        reports.append(report)
        if not _in_worker():
            self.bad_videos.record(*report)


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a WebDataset tar, read as a stream.

    A sample is a run of consecutive members sharing a key (the name up to the first dot of its
    base name): ``clip7.mp4`` and ``clip7.txt`` give ``("clip7", {"mp4": ..., "txt": ...})``.
    """
    key, files = None, {}
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            member_key = f"{folder}/{stem}" if folder else stem
            if member_key != key and key is not None:
                yield key, files
                files = {}
            key = member_key
            data = tar.extractfile(member)
            files[ext.lower()] = data.read() if data is not None else b""
    if key is not None:
        yield key, files


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """Tar paths from a glob or a list of paths and globs, sorted, without duplicates."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    found = sorted({p for pattern in patterns for p in glob.glob(str(pattern))})
    if not found:
        raise DataSourceError(f"no OpenVid shards match {patterns} (set data.shards to .tar files or a glob)")
    return found


class OpenVidShardDataset(IterableDataset):
    """OpenVid-1M from WebDataset-style tar shards of ``NAME.mp4`` + ``NAME.txt`` (caption) pairs.

    One iteration is one epoch. Shards are put in an order seeded by ``(seed, epoch)`` and dealt to
    the ``world_size * workers`` readers (``rank`` given, the worker from ``get_worker_info``):
    reader ``s`` reads shards ``s, s + n, s + 2n, ...``, so readers never share a sample and together
    read every sample once. For equal work per rank, use a shard count divisible by ``world_size *
    workers`` and equally full shards. Items are those of :class:`OpenVidDataset` plus ``position``;
    the clip's start frame is seeded by ``(seed, epoch, shard, sample)``.

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
        self.too_short = _check_args(num_frames, stride, resolution, on_bad_video)
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
        g = torch.Generator().manual_seed(_seed(self.seed, epoch))
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
            for j, item in self._read_shard(order[p], done, _seed(self.seed, epoch, p), pending):
                position = (reader, p, j + 1)
                self.positions[reader] = (p, j + 1)
                yield {**item, BAD_KEY: list(pending), POSITION_KEY: (readers, *position)}
                pending.clear()
        if not _in_worker():
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
                g = torch.Generator().manual_seed(_seed(seed, j))
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
                    self._report(pending, (name, "too_short", _action(self.too_short, "too_short")))
                caption = files.get("txt", b"").decode("utf-8", errors="replace").strip()
                yield j, {"pixels": clip.pixels, "captions": caption}
        except (tarfile.TarError, OSError) as err:
            log.warning("OpenVid: shard %s unreadable after %d samples (%s); moving on", shard, j + 1, err)

    def _report(self, pending: list[Report], report: Report) -> None:
        pending.append(report)
        if not _in_worker():
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


def collate_clips(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Items to ``{"pixels": (B, 3, F, H, W), "captions": list[str]}`` plus the bookkeeping keys
    ``bad_videos`` (all items' reports) and ``position`` (the last item's, shards only)."""
    batch: dict[str, Any] = {
        "pixels": torch.stack([item["pixels"] for item in items]),
        "captions": [item["captions"] for item in items],
        BAD_KEY: [report for item in items for report in item.get(BAD_KEY, [])],
    }
    if POSITION_KEY in items[-1]:
        batch[POSITION_KEY] = items[-1][POSITION_KEY]
    return batch


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
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        _check_args(num_frames, stride, resolution, on_bad_video)
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
