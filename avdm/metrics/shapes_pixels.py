"""Reading one coloured shape on a plain background from pixels, frame by frame (the shapes clips).

Frames smaller than :data:`WORK_SIZE` pixels are first upsampled bilinearly (thresholding the
interpolated image traces the sub-pixel edges of small shapes). Foreground pixels are those whose RGB
distance from :data:`~avdm.data.shapes.BACKGROUND` exceeds half the clip's peak distance (its 99.9th
percentile, robust to a few stray pixels). Colour: the palette colour whose offset from the background
points most nearly the way the mean foreground offset does (cosine), so dimming, blur and codec bleed do
not move it. Shape: the mask is opened with a 3x3 square (ragged one-pixel edges from noise go); the
triangle (it points up) has two to three times as many pixels in the lower half of its bounding box as in
the upper, circle and square as many; the fill ratio of the box tells circle (~0.785) from square (~1).

Used by :mod:`avdm.metrics.prompt_accuracy` (what a clip shows) and :mod:`avdm.metrics.motion` (whether
it shows one object moving smoothly).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from avdm.data.shapes import BACKGROUND, COLOURS, PALETTE

FOREGROUND_FRACTION = 0.5  # of the peak distance from the background
PEAK_QUANTILE = 0.999
MIN_CONTRAST = 40.0  # peak distance (0-255 RGB) below which a clip has no foreground
MIN_PIXELS = 3  # a frame with fewer foreground pixels is ignored
TRIANGLE_ABOVE = 0.12  # (lower - upper) / all pixels of the box: ~0.5 for the triangle, ~0 otherwise
CIRCLE_BELOW = 0.87  # fill ratio: circle | square
WORK_SIZE = 64  # smaller frames are upsampled to at least this before reading the shape
NONE = "none"


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


def upsampled(frames: np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` frames scaled bilinearly by the integer factor that makes the shorter side at
    least :data:`WORK_SIZE`: thresholding the interpolated image traces the sub-pixel edges of small
    shapes that whole pixels cannot show."""
    factor = -(-WORK_SIZE // min(frames.shape[1:3]))
    if factor == 1:
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).numpy()


def palette_colour(offsets: np.ndarray) -> str:
    """The palette colour nearest in direction (cosine) to the mean of ``(N, 3)`` background offsets."""
    palette = np.array([PALETTE[c] for c in COLOURS], np.float32) - np.array(BACKGROUND, np.float32)
    mean = offsets.mean(axis=0)
    cosines = palette @ mean / (np.linalg.norm(palette, axis=1) * np.linalg.norm(mean) + 1e-6)
    return COLOURS[int(np.argmax(cosines))]


def opened(mask: np.ndarray) -> np.ndarray:
    """Morphological opening of a ``(H, W)`` mask with a 3x3 square."""
    h, w = mask.shape
    padded = np.pad(mask, 1, constant_values=False)
    eroded = np.logical_and.reduce([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])
    padded = np.pad(eroded, 1, constant_values=False)
    return np.logical_or.reduce([padded[i : i + h, j : j + w] for i in range(3) for j in range(3)])


def shape_features(mask: np.ndarray) -> tuple[float, float] | None:
    """``(fill ratio, lower-half excess)`` of a ``(H, W)`` mask's bounding box; ``None`` when empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    top, bottom = ys.min(), ys.max()
    fill = len(ys) / ((bottom - top + 1) * (xs.max() - xs.min() + 1))
    middle = (top + bottom) / 2
    return fill, float(((ys > middle).sum() - (ys < middle).sum()) / len(ys))


def shape_of(masks: Sequence[np.ndarray]) -> str:
    """``circle``, ``square`` or ``triangle``: the median features of ``(H, W)`` masks (``none``: empty)."""
    features = [f for f in (shape_features(opened(m)) for m in masks) if f is not None]
    if not features:
        return NONE
    fill, excess = np.median(np.array(features), axis=0)
    return "triangle" if excess > TRIANGLE_ABOVE else "circle" if fill < CIRCLE_BELOW else "square"


def foreground(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(offsets (F, H', W', 3), masks (F, H', W'))`` of RGB frames (:func:`as_rgb_frames`) upsampled to
    :data:`WORK_SIZE`: each pixel's RGB offset from the background and whether it is foreground; ``None``
    when the clip has no clear foreground (peak distance under :data:`MIN_CONTRAST`)."""
    frames = upsampled(frames)
    offsets = frames - np.array(BACKGROUND, np.float32)
    distance = np.linalg.norm(offsets, axis=-1)  # (F, H, W)
    peak = float(np.quantile(distance, PEAK_QUANTILE))
    if peak < MIN_CONTRAST:
        return None
    return offsets, distance > FOREGROUND_FRACTION * peak
