"""Prompt accuracy on the shapes dataset: read colour, shape and direction back from pixels.

Frames smaller than 64 pixels are first upsampled bilinearly. Foreground pixels are those whose RGB
distance from :data:`~avdm.data.shapes.BACKGROUND` exceeds half the clip's peak distance (its 99.9th
percentile, robust to a few stray pixels). Then

- colour: the palette colour whose offset from the background points most nearly the way the mean
  foreground offset does (cosine), so dimming, blur and codec bleed into the background do not move it;
- shape: per frame, the foreground is first opened with a 3x3 square (erode, then dilate: ragged
  one-pixel edges from noise go, a square is unchanged); the triangle (it points up) has two to three
  times as many pixels in the lower half of its bounding box as in the upper, circle and square as
  many; then the fill ratio of the bounding box tells circle (~0.785) from square (~1). Both are
  medians over frames;
- direction: the sign of the centroid's move from the first to the last frame with a foreground,
  along the axis that moved more; a move under 5% of the frame reads as ``"static"``.

A clip with no clear foreground reads ``("none", "none", "none")``; ``"static"`` and ``"none"`` never
match a caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from avdm.data.shapes import BACKGROUND, COLOURS, PALETTE, parse_caption

FOREGROUND_FRACTION = 0.5  # of the peak distance from the background
PEAK_QUANTILE = 0.999
MIN_CONTRAST = 40.0  # peak distance (0-255 RGB) below which a clip has no foreground
MIN_PIXELS = 3  # a frame with fewer foreground pixels is ignored
TRIANGLE_ABOVE = 0.12  # (lower - upper) / all pixels of the box: ~0.5 for the triangle, ~0 otherwise
CIRCLE_BELOW = 0.87  # fill ratio: circle | square
WORK_SIZE = 64  # smaller frames are upsampled to at least this before reading the shape
MIN_MOVE = 0.05  # of the frame's shorter side
NONE, STATIC = "none", "static"
PARTS = ("colour", "shape", "direction")


class ShapeAttributes(NamedTuple):
    colour: str
    shape: str
    direction: str


def as_rgb_frames(video: Tensor | np.ndarray) -> np.ndarray:
    """float32 ``(F, H, W, 3)`` in [0, 255] from uint8 ``(F, H, W, 3)`` or float ``(3, F, H, W)`` in
    [-1, 1]."""
    array = video.detach().cpu().numpy() if isinstance(video, Tensor) else np.asarray(video)
    if array.dtype == np.uint8:
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"uint8 video must be (F, H, W, 3), got {array.shape}")
        return array.astype(np.float32)
    if array.ndim != 4 or array.shape[0] != 3:
        raise ValueError(f"float video must be (3, F, H, W) in [-1, 1], got {array.shape}")
    return np.clip((array.astype(np.float32) + 1.0) * 127.5, 0.0, 255.0).transpose(1, 2, 3, 0)


def _upsampled(frames: np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` frames scaled bilinearly by the integer factor that makes the shorter side at
    least :data:`WORK_SIZE`: thresholding the interpolated image traces the sub-pixel edges of small
    shapes that whole pixels cannot show."""
    factor = -(-WORK_SIZE // min(frames.shape[1:3]))
    if factor == 1:
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).numpy()


def _colour(offsets: np.ndarray) -> str:
    palette = np.array([PALETTE[c] for c in COLOURS], np.float32) - np.array(BACKGROUND, np.float32)
    mean = offsets.mean(axis=0)
    cosines = palette @ mean / (np.linalg.norm(palette, axis=1) * np.linalg.norm(mean) + 1e-6)
    return COLOURS[int(np.argmax(cosines))]


def _open(mask: np.ndarray) -> np.ndarray:
    """Morphological opening of a ``(H, W)`` mask with a 3x3 square."""
    h, w = mask.shape
    padded = np.pad(mask, 1, constant_values=False)
    eroded = np.logical_and.reduce([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    padded = np.pad(eroded, 1, constant_values=False)
    return np.logical_or.reduce([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])


def _shape_features(mask: np.ndarray) -> tuple[float, float] | None:
    """``(fill ratio, lower-half excess)`` of a ``(H, W)`` mask's bounding box; ``None`` when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    top, bottom = ys.min(), ys.max()
    fill = len(ys) / ((bottom - top + 1) * (xs.max() - xs.min() + 1))
    middle = (top + bottom) / 2
    return fill, float(((ys > middle).sum() - (ys < middle).sum()) / len(ys))


def _shape(masks: Sequence[np.ndarray]) -> str:
    features = [f for f in (_shape_features(_open(m)) for m in masks) if f is not None]
    if not features:
        return NONE
    fill, excess = np.median(np.array(features), axis=0)
    return "triangle" if excess > TRIANGLE_ABOVE else "circle" if fill < CIRCLE_BELOW else "square"


def _direction(first: np.ndarray, last: np.ndarray, min_move: float) -> str:
    dy, dx = (last - first).tolist()
    if max(abs(dx), abs(dy)) < min_move:
        return STATIC
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def read_shape_attributes(video: Tensor | np.ndarray) -> ShapeAttributes:
    """``(colour, shape, direction)`` seen in one clip: uint8 ``(F, H, W, 3)`` RGB, or float
    ``(3, F, H, W)`` in [-1, 1] (a tensor or an array)."""
    frames = _upsampled(as_rgb_frames(video))
    offsets = frames - np.array(BACKGROUND, np.float32)
    distance = np.linalg.norm(offsets, axis=-1)  # (F, H, W)
    peak = float(np.quantile(distance, PEAK_QUANTILE))
    if peak < MIN_CONTRAST:
        return ShapeAttributes(NONE, NONE, NONE)
    masks = distance > FOREGROUND_FRACTION * peak
    frames_with_shape = [t for t in range(len(masks)) if masks[t].sum() >= MIN_PIXELS]
    if not frames_with_shape:
        return ShapeAttributes(NONE, NONE, NONE)
    colour = _colour(offsets[masks])
    shape = _shape([masks[t] for t in frames_with_shape])
    first, last = (np.argwhere(masks[t]).mean(axis=0) for t in (frames_with_shape[0], frames_with_shape[-1]))
    direction = _direction(first, last, MIN_MOVE * min(masks.shape[1:]))
    return ShapeAttributes(colour, shape, direction)


class PromptAccuracy(Metric):
    """Fraction of clips whose colour, shape and direction (each, and all three) match their prompt.

    ``update(videos (B, 3, F, H, W) in [-1, 1], prompts: list[str])`` with shapes captions (see
    :func:`avdm.data.shapes.parse_caption`; anything else raises ``ValueError``). ``compute()`` returns
    ``{"colour", "shape", "direction", "all"}``, each a float tensor in [0, 1] (NaN before any update).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.zeros(len(PARTS) + 1, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, videos: Tensor, prompts: Sequence[str]) -> None:
        if videos.ndim != 5 or videos.shape[1] != 3 or len(prompts) != videos.shape[0]:
            raise ValueError(
                f"expected videos (B, 3, F, H, W) and B prompts, got {tuple(videos.shape)} and {len(prompts)}"
            )
        targets = [parse_caption(p) for p in prompts]
        hits = torch.zeros(len(PARTS) + 1, dtype=torch.long)
        for video, target in zip(videos, targets, strict=True):
            seen = read_shape_attributes(video)
            matches = [s == t for s, t in zip(seen, target, strict=True)]
            hits += torch.tensor([*matches, all(matches)], dtype=torch.long)
        self.correct += hits.to(self.correct.device)
        self.total += len(targets)

    def compute(self) -> dict[str, Tensor]:
        rates = self.correct.double() / self.total
        return {name: rates[i].float() for i, name in enumerate((*PARTS, "all"))}
