"""OpenVid-1M clips from its CSV and a folder of mp4 files: :class:`OpenVidDataset`, a map-style dataset
that samples and decodes one seeded clip per row and replaces or repairs bad videos by ``on_bad_video``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from avdm.data.openvid_items import (
    BAD_KEY,
    MAX_DRAWS,
    BadVideoTally,
    Report,
    check_clip_args,
    in_worker,
    mix_seed,
    repair_action,
)
from avdm.data.openvid_sources import DataSourceError, read_openvid_csv
from avdm.data.video_io import BadVideoError, read_clip


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


class OpenVidDataset(Dataset):
    """OpenVid-1M from its CSV (``video``, ``caption`` columns) and a folder of mp4 files.

    Item ``i`` is ``{"pixels": (3, num_frames, resolution, resolution) in [-1, 1], "captions": str,
    "bad_videos": list of (name, reason, action)}``. The clip's start frame and any replacement draw
    (``on_bad_video="skip"``) come from a generator seeded by ``(seed, i)``, so an item is the same in
    every epoch, process and run. Batch items with :func:`~avdm.data.openvid_items.collate_clips`.
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
        self.too_short = check_clip_args(num_frames, stride, resolution, on_bad_video)
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
        g = torch.Generator().manual_seed(mix_seed(self.seed, index))
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
            self._report(reports, (name, "too_short", repair_action(self.too_short, "too_short")))
        return {"pixels": clip.pixels, "captions": self.captions[i]}

    def _report(self, reports: list[Report], report: Report) -> None:
        reports.append(report)
        if not in_worker():
            self.bad_videos.record(*report)
