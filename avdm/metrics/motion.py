"""Motion faithfulness of shapes clips, read from pixels frame by frame.

A shapes caption describes one object of one colour and shape moving in a straight line at constant
speed. A video model can get the colour, shape and overall direction right (prompt accuracy) and still
let the object jump, change colour or vanish mid-clip; frame-similarity scores, dominated by the
background, do not see that. Per clip, the object is tracked in every frame (:func:`read_track`: the
foreground of :mod:`avdm.metrics.shapes_pixels`, its palette colour, its shape, its centroid), then:

* **persistence**: the object is present (at least :data:`~avdm.metrics.shapes_pixels.MIN_PIXELS`
  foreground pixels) in every frame;
* **identity**: its palette colour and its shape are the same in every frame (a frame's shape counts only
  when its features lie :data:`SHAPE_MARGIN` clear of a class boundary of
  :func:`~avdm.metrics.shapes_pixels.shape_of`: one frame's fill ratio of 0.871 is no square);
* **smoothness**: no consecutive move is a jump (longer than :data:`JUMP_RATIO` times the clip's median
  move and than :data:`JUMP_MIN` of the frame side), and the track stays within :data:`MAX_DEVIATION` of
  the frame side (RMS) of the best straight constant-speed path ``c_f = a + b f`` (least squares);
* **faithful**: all three.

Thresholds were set on the clips, not on models: real clips move a constant 0-4 pixels per frame at 32
pixels and stay within 0.3 pixels of their straight path (all pass, `tests/test_motion_metrics.py`); a
teleport, a colour swap and a vanishing frame each fail the metric aimed at them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from avdm.metrics.shapes_pixels import (
    CIRCLE_BELOW,
    MIN_PIXELS,
    NONE,
    TRIANGLE_ABOVE,
    as_rgb_frames,
    foreground,
    opened,
    palette_colour,
    shape_features,
)

SHAPE_MARGIN = 0.04  # per-frame shape features this far inside a class boundary are a confident reading
JUMP_RATIO = 3.0  # a move longer than this many median moves ...
JUMP_MIN = 0.1  # ... and than this fraction of the frame side is a jump
MAX_DEVIATION = 0.05  # RMS distance from the straight constant-speed path, as a fraction of the side
RATES = ("persistence", "identity", "smoothness", "faithful")
UNSURE = "unsure"


@dataclass
class Track:
    """One clip's object per frame.

    Attributes:
        present: ``(F,)`` whether the frame shows the object.
        colours, shapes: per frame, the palette colour and the shape (:func:`confident_shape`; ``none``
            where absent).
        centroids: ``(F, 2)`` ``(y, x)`` in pixels of the clip's own frames (NaN where absent).
        side: the shorter side of a frame, in pixels.
    """

    present: np.ndarray
    colours: list[str]
    shapes: list[str]
    centroids: np.ndarray
    side: int


def read_track(video: Tensor | np.ndarray) -> Track:
    """Track the object of one clip: uint8 ``(F, H, W, 3)`` or float ``(3, F, H, W)`` in [-1, 1]."""
    frames = as_rgb_frames(video)
    count, side = frames.shape[0], min(frames.shape[1:3])
    seen = foreground(frames)
    present = np.zeros(count, bool)
    colours, shapes = [NONE] * count, [NONE] * count
    centroids = np.full((count, 2), np.nan)
    if seen is not None:
        offsets, masks = seen
        scale = side / min(masks.shape[1:])
        for f in range(count):
            if masks[f].sum() < MIN_PIXELS:
                continue
            present[f] = True
            colours[f] = palette_colour(offsets[f][masks[f]])
            shapes[f] = confident_shape(masks[f])
            # Pixel centres of the upsampled grid, in the clip's own pixel units.
            centroids[f] = (np.argwhere(masks[f]).mean(axis=0) + 0.5) * scale
    return Track(present, colours, shapes, centroids, side)


def confident_shape(mask: np.ndarray) -> str:
    """The shape of one frame's mask when its features are :data:`SHAPE_MARGIN` clear of the boundaries of
    :func:`~avdm.metrics.shapes_pixels.shape_of`, else ``"unsure"`` (which no other reading contradicts)."""
    features = shape_features(opened(mask))
    if features is None:
        return NONE
    fill, excess = features
    if excess > TRIANGLE_ABOVE + SHAPE_MARGIN:
        return "triangle"
    if excess < TRIANGLE_ABOVE - SHAPE_MARGIN:
        if fill < CIRCLE_BELOW - SHAPE_MARGIN:
            return "circle"
        if fill > CIRCLE_BELOW + SHAPE_MARGIN:
            return "square"
    return UNSURE


def path_deviation(centroids: np.ndarray) -> float:
    """RMS distance ``(F, 2)`` centroids keep from their least-squares straight constant-speed path."""
    f = np.arange(len(centroids), dtype=np.float64)
    design = np.stack([np.ones_like(f), f], axis=1)
    coef, *_ = np.linalg.lstsq(design, centroids, rcond=None)
    residual = centroids - design @ coef
    return float(np.sqrt((residual**2).sum(axis=1).mean()))


def judge(track: Track) -> dict[str, bool]:
    """The rates of :data:`RATES` for one track."""
    persistence = bool(track.present.all())
    identity = persistence and len(set(track.colours)) == 1 and len(set(track.shapes) - {UNSURE}) <= 1
    smooth = False
    if persistence and len(track.present) > 1:
        moves = np.linalg.norm(np.diff(track.centroids, axis=0), axis=1)
        typical = float(np.median(moves))
        jump = bool(((moves > JUMP_RATIO * typical) & (moves > JUMP_MIN * track.side)).any())
        smooth = not jump and path_deviation(track.centroids) <= MAX_DEVIATION * track.side
    elif persistence:
        smooth = True
    return {
        "persistence": persistence,
        "identity": identity,
        "smoothness": smooth,
        "faithful": persistence and identity and smooth,
    }


class MotionFaithfulness(Metric):
    """Rates over clips of persistence, identity, smoothness and all three (``faithful``).

    ``update(videos (B, 3, F, H, W) in [-1, 1])``; ``compute()`` returns ``{rate: float tensor in [0, 1]}``
    for :data:`RATES` (NaN before any update).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("passed", default=torch.zeros(len(RATES), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, videos: Tensor) -> None:
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected videos (B, 3, F, H, W), got {tuple(videos.shape)}")
        hits = torch.zeros(len(RATES), dtype=torch.long)
        for video in videos:
            verdict = judge(read_track(video))
            hits += torch.tensor([verdict[r] for r in RATES], dtype=torch.long)
        self.passed += hits.to(self.passed.device)
        self.total += videos.shape[0]

    def compute(self) -> dict[str, Tensor]:
        rates = self.passed.double() / self.total
        return {name: rates[i].float() for i, name in enumerate(RATES)}
