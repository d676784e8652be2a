"""What OpenVid items share: the bad-video policies and their checks, the bookkeeping keys items carry
(``bad_videos``, ``position``), the once-per-file :class:`BadVideoTally`, seed mixing, and
:func:`collate_clips`, which batches items of either OpenVid dataset.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from avdm.config_schema import check_parameters
from avdm.data.video_io import REASONS, TooShort
from avdm.errors import ConfigError

log = logging.getLogger("avdm.data.openvid")  # the logger OpenVid's warnings have always used

POLICIES = ("skip", "loop", "pad")
BAD_KEY, POSITION_KEY = "bad_videos", "position"
MAX_DRAWS = 100
Report = tuple[str, str, str]  # (file name, reason, action taken)


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


def check_clip_args(num_frames: int, stride: int, resolution: int, on_bad_video: str) -> TooShort:
    """Check the clip settings; return the ``too_short`` mode of :func:`~avdm.data.video_io.read_clip`
    that ``on_bad_video`` means."""
    check_parameters(None, "data", num_frames=num_frames, stride=stride, resolution=resolution)
    if on_bad_video not in POLICIES:
        raise ConfigError(f"data.on_bad_video must be one of {', '.join(POLICIES)}; got {on_bad_video!r}")
    return "error" if on_bad_video == "skip" else on_bad_video  # type: ignore[return-value]


def repair_action(too_short: TooShort, reason: str) -> str:
    """What was done about a bad video of ``reason`` under ``too_short``, in words for the log."""
    if reason == "too_short" and too_short != "error":
        return "looped its frames" if too_short == "loop" else "padded with its last frame"
    return "skipped"


def mix_seed(*parts: int) -> int:
    """One generator seed from several integers, the same in every process and run."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return seed


def in_worker() -> bool:
    """Whether this runs in a dataloader worker (whose objects the main process never sees)."""
    return get_worker_info() is not None


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
