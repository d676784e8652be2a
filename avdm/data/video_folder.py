"""A folder of generated or reference ``*.mp4`` clips, read as one tensor, with their captions."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from avdm.data.video_io import center_crop, decode_all_frames, resized_shape
from avdm.errors import AvdmUserError


def load_videos(folder: Path, num_frames: int, resolution: int) -> tuple[list[str], Tensor]:
    """Every ``*.mp4`` of ``folder`` except grids: names and clips ``(N, 3, F, R, R)`` in [-1, 1].

    Each clip is its first ``num_frames`` frames, resized on the shorter side and center-cropped to ``R``.
    """
    paths = sorted(p for p in folder.glob("*.mp4") if p.stem != "grid")
    if not paths:
        raise AvdmUserError(f"no .mp4 videos in '{folder}'")
    clips = []
    for path in paths:
        frames = torch.from_numpy(decode_all_frames(path)[:num_frames]).permute(0, 3, 1, 2).float()
        if frames.shape[0] < num_frames:
            raise AvdmUserError(f"'{path}' has {frames.shape[0]} frames; --num-frames asks for {num_frames}")
        size = resized_shape(frames.shape[2], frames.shape[3], resolution)
        frames = torch.nn.functional.interpolate(frames, size=size, mode="bilinear", antialias=True)
        frames = center_crop(frames.permute(0, 2, 3, 1), resolution)  # (F, R, R, 3)
        clips.append(frames.permute(3, 0, 1, 2) / 127.5 - 1)
    return [p.name for p in paths], torch.stack(clips)


def captions_for(folder: Path, names: Sequence[str]) -> list[str]:
    """Captions from ``folder/captions.csv`` or, failing that, from the file names."""
    table = folder / "captions.csv"
    if table.exists():
        with table.open(newline="") as f:
            mapping = {row["video"]: row["caption"] for row in csv.DictReader(f)}
        missing = [n for n in names if n not in mapping]
        if missing:
            raise AvdmUserError(f"'{table}' has no caption for {missing[:3]}")
        return [mapping[n] for n in names]
    return [re.sub(r"^\d+_", "", Path(n).stem).replace("_", " ") for n in names]
