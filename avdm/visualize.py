"""Sample videos for people: grids of clips written as mp4 with PyAV."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor


def video_grid(videos: Tensor, columns: int | None = None) -> Tensor:
    """Tile ``(B, 3, F, H, W)`` clips in [-1, 1] into one ``(F, H_grid, W_grid, 3)`` uint8 video."""
    b, _, f, h, w = videos.shape
    columns = columns or math.ceil(math.sqrt(b))
    rows = math.ceil(b / columns)
    grid = torch.zeros(f, rows * h, columns * w, 3, dtype=torch.uint8)
    frames = ((videos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    for i in range(b):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i]
    return grid


def write_mp4(path: str | Path, frames: Tensor, fps: int = 8, crf: int | None = None) -> Path:
    """Write ``(F, H, W, 3)`` uint8 frames as an H.264 mp4 (sizes padded to even numbers); ``crf`` sets
    the quality (libx264's default 23 when ``None``; lower is closer to lossless)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, h, w, _ = frames.shape
    array = np.zeros((f, h + h % 2, w + w % 2, 3), dtype=np.uint8)
    array[:, :h, :w] = frames.numpy()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = array.shape[2], array.shape[1], "yuv420p"
        if crf is not None:
            stream.options = {"crf": str(crf)}
        for frame in array:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
