"""The "shapes" dataset: one coloured shape moving across a plain background, captioned in words.

A clip shows a filled circle, square or triangle of one palette colour that moves at a constant
speed in one direction, from a seeded random start, staying fully inside the frame. Its caption is
``"a {colour} {shape} moving {direction}"``. :func:`write_shapes_dataset` writes clips as mp4 files
plus a CSV in OpenVid's layout (``video``, ``caption``), so :class:`avdm.data.openvid_folder.OpenVidDataset`
reads them; :mod:`avdm.metrics.prompt_accuracy` reads the three words back from pixels.

CLI: ``python -m avdm.data.shapes ROOT --num-videos N``; ``python -m avdm.data.shapes FILE
--prompts-per-caption N`` writes a prompt file instead.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 40),
    "purple": (200, 50, 220),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
BACKGROUND = (0, 0, 0)
# Unit step per direction as (dx, dy) in image coordinates (y grows downwards).
STEPS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
COMBINATIONS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(COLOURS, SHAPES, DIRECTIONS))
CSV_NAME, VIDEO_DIR = "shapes.csv", "videos"

SUPERSAMPLE = 4  # sub-pixel samples per axis: antialiased edges, smooth sub-pixel motion
MIN_TRAVEL, MAX_TRAVEL = 0.6, 1.0  # fraction of the free range the shape crosses in one clip


def caption(colour: str, shape: str, direction: str) -> str:
    """``"a {colour} {shape} moving {direction}"``."""
    return f"a {colour} {shape} moving {direction}"


def parse_caption(text: str) -> tuple[str, str, str]:
    """``(colour, shape, direction)`` of a :func:`caption` (case, spaces and a final period ignored)."""
    words = text.strip().rstrip(".").lower().split()
    if (
        len(words) != 5
        or words[0] != "a"
        or words[3] != "moving"
        or words[1] not in PALETTE
        or words[2] not in SHAPES
        or words[4] not in STEPS
    ):
        raise ValueError(
            f"not a shapes caption: {text!r}; expected 'a COLOUR SHAPE moving DIRECTION' with COLOUR in "
            f"{COLOURS}, SHAPE in {SHAPES}, DIRECTION in {DIRECTIONS}"
        )
    return words[1], words[2], words[4]


def half_extent(size: int) -> float:
    """Half the side of a shape's bounding box in a ``size x size`` frame (the box is ``size / 4``)."""
    return max(size / 8, 2.0)


def shape_coverage(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Fraction of each pixel covered by ``shape`` centred at ``(cx, cy)`` with half-extent ``r``,
    float ``(size, size)`` in [0, 1]. Pixel ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``.

    The triangle points up: apex at ``cy - r``, base ``2r`` wide at ``cy + r``.
    """
    samples = (np.arange(size)[:, None] + (np.arange(SUPERSAMPLE) + 0.5)[None, :] / SUPERSAMPLE).reshape(-1)
    dx, dy = samples[None, :] - cx, samples[:, None] - cy
    if shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif shape == "triangle":
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render_clip(
    colour: str, shape: str, direction: str, num_frames: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """One clip, uint8 ``(num_frames, size, size, 3)`` RGB.

    The shape crosses 60-100% of its free range at a constant speed; start and the perpendicular
    position are drawn from ``rng``. It stays at least one pixel away from every border.
    """
    if colour not in PALETTE or direction not in STEPS:
        raise ValueError(
            f"unknown colour {colour!r} or direction {direction!r}; valid: {COLOURS}, {DIRECTIONS}"
        )
    if num_frames < 1 or size < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got {num_frames} and {size}")
    r = half_extent(size)
    lo, hi = r + 1.0, size - r - 1.0
    travel = rng.uniform(MIN_TRAVEL, MAX_TRAVEL) * (hi - lo)
    (sx, sy), across = STEPS[direction], rng.uniform(lo, hi)
    sign = sx + sy
    start = rng.uniform(lo, hi - travel) if sign > 0 else rng.uniform(lo + travel, hi)
    fg, bg = np.array(PALETTE[colour], np.float64), np.array(BACKGROUND, np.float64)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        along = start + sign * travel * t / max(num_frames - 1, 1)
        cx, cy = (along, across) if sx else (across, along)
        alpha = shape_coverage(shape, cx, cy, r, size)[..., None]
        frames[t] = np.rint(bg + alpha * (fg - bg)).astype(np.uint8)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int, crf: int = 14) -> None:
    """Write uint8 ``(F, H, W, 3)`` RGB frames as H.264 (yuv420p) mp4, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def write_shapes_dataset(
    root: str | Path, num_videos: int, num_frames: int = 32, size: int = 64, fps: int = 8, seed: int = 0
) -> Path:
    """Write ``root/videos/NNNNN.mp4`` and ``root/shapes.csv`` (``video,caption``); returns the CSV path.

    Video ``i`` shows combination ``i mod len(COMBINATIONS)`` (so all combinations appear equally
    often, to within one) drawn with ``np.random.default_rng([seed, i])``. Files are written
    atomically, so an existing mp4 is complete and is kept; re-running only fills in what is missing.
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if size % 2:
        raise ValueError(f"size must be even (yuv420p), got {size}")
    root = Path(root)
    videos = root / VIDEO_DIR
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_videos):
        combo = COMBINATIONS[i % len(COMBINATIONS)]
        name = f"{i:05d}.mp4"
        if not (videos / name).is_file():
            frames = render_clip(*combo, num_frames, size, np.random.default_rng([seed, i]))
            write_video(videos / name, frames, fps)
        rows.append((name, caption(*combo)))
    csv_path = root / CSV_NAME
    tmp = csv_path.with_name(f".{CSV_NAME}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("video", "caption"))
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    return csv_path


def every_caption(per_caption: int) -> list[str]:
    """Every caption ``per_caption`` times in a row (60 captions: 5 colours x 3 shapes x 4 directions)."""
    if per_caption < 1:
        raise ValueError(f"per_caption must be >= 1, got {per_caption}")
    return [caption(*combo) for combo in COMBINATIONS for _ in range(per_caption)]


def write_prompt_file(path: str | Path, per_caption: int) -> Path:
    """:func:`every_caption`, one per line: a prompt file for ``python -m avdm.synthesize``."""
    lines = every_caption(per_caption)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m avdm.data.shapes",
        description="Write the procedural shapes dataset: ROOT/videos/*.mp4 and ROOT/shapes.csv.",
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--num-videos", type=int, default=len(COMBINATIONS) * 10)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompts-per-caption",
        type=int,
        default=None,
        metavar="N",
        help="write only ROOT as a prompt file: every caption N times (for python -m avdm.synthesize)",
    )
    args = parser.parse_args(argv)
    if args.prompts_per_caption is not None:
        path = write_prompt_file(args.root, args.prompts_per_caption)
        print(f"wrote {args.prompts_per_caption * len(COMBINATIONS)} prompts to {path}")
        return path
    csv_path = write_shapes_dataset(
        args.root, args.num_videos, args.num_frames, args.size, args.fps, args.seed
    )
    print(f"wrote {args.num_videos} videos: csv {csv_path}, video_dir {csv_path.parent / VIDEO_DIR}")
    return csv_path


if __name__ == "__main__":
    main()
