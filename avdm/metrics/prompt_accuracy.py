"""Prompt accuracy on the shapes dataset: read colour, shape and direction back from pixels.

Colour and shape are read as :mod:`avdm.metrics.shapes_pixels` describes (the shape is the median of
the per-frame features); the direction is the sign of the centroid's move from the first to the last
frame with a foreground, along the axis that moved more; a move under 5% of the frame reads as
``"static"``.

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

from avdm.data.shapes import parse_caption
from avdm.metrics.shapes_pixels import MIN_PIXELS, NONE, as_rgb_frames, foreground, palette_colour, shape_of

MIN_MOVE = 0.05  # of the frame's shorter side
STATIC = "static"
PARTS = ("colour", "shape", "direction")


class ShapeAttributes(NamedTuple):
    colour: str
    shape: str
    direction: str


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
    seen = foreground(as_rgb_frames(video))
    if seen is None:
        return ShapeAttributes(NONE, NONE, NONE)
    offsets, masks = seen
    frames_with_shape = [t for t in range(len(masks)) if masks[t].sum() >= MIN_PIXELS]
    if not frames_with_shape:
        return ShapeAttributes(NONE, NONE, NONE)
    colour = palette_colour(offsets[masks])
    shape = shape_of([masks[t] for t in frames_with_shape])
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
