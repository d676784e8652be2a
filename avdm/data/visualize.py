"""Sample videos for people: grids of clips written as mp4 with PyAV, and PNG contact sheets of frames."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor


def to_uint8(videos: Tensor) -> Tensor:
    """Pixels in [-1, 1] (clamped) as uint8 in [0, 255], same shape."""
    return ((videos.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def video_grid(videos: Tensor, columns: int | None = None) -> Tensor:
    """Tile ``(B, 3, F, H, W)`` clips in [-1, 1] into one ``(F, H_grid, W_grid, 3)`` uint8 video."""
    b, _, f, h, w = videos.shape
    columns = columns or math.ceil(math.sqrt(b))
    rows = math.ceil(b / columns)
    grid = torch.zeros(f, rows * h, columns * w, 3, dtype=torch.uint8)
    frames = to_uint8(videos).permute(0, 2, 3, 4, 1)
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


def frames_sheet(
    rows: Sequence[tuple[str, Tensor]], prompts: Sequence[str], path: str | Path, scale: int = 2
) -> Path:
    """A PNG contact sheet: for every prompt a block with one line per run, the run's frames left to right.

    Args:
        rows: ``(label, videos (N, 3, F, H, W) in [-1, 1])`` per run; video ``i`` of every run is of
            ``prompts[i]``.
        prompts: the ``N`` prompts, printed above their blocks.
        scale: integer upscaling of each frame (nearest), so small clips stay legible.
    """
    from PIL import Image, ImageDraw

    n, _, f, h, w = rows[0][1].shape
    if any(videos.shape != rows[0][1].shape for _, videos in rows) or len(prompts) != n:
        raise ValueError("every run needs one (3, F, H, W) video per prompt, of the same size")
    label_w, line_h, gap = 8 * max(len(label) for label, _ in rows) + 12, h * scale + 2, 16
    sheet_w = label_w + f * (w * scale + 2)
    sheet_h = n * (gap + len(rows) * line_h) + 4
    sheet = Image.new("RGB", (sheet_w, sheet_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 2
    for i, prompt in enumerate(prompts):
        draw.text((4, y + 2), prompt, fill=(0, 0, 0))
        y += gap
        for label, videos in rows:
            draw.text((4, y + line_h // 2 - 5), label, fill=(0, 0, 0))
            frames = to_uint8(videos[i]).permute(1, 2, 3, 0)
            for j, frame in enumerate(frames.numpy()):
                tile = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
                sheet.paste(tile, (label_w + j * (w * scale + 2), y))
            y += line_h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
