"""Collapse statistics of a batch of generated videos: what the loss curves do not show.

Each function takes videos ``(B, C, F, H, W)`` (pixels in ``[-1, 1]`` or latents) and returns a 0-d
tensor; :func:`collapse_statistics` gathers them. Read against the teacher's values from the same noise
(:class:`avdm.training.callbacks.diagnostics.CollapseDiagnostics` logs both):

* ``diversity``: samples of one prompt from different noise alike (mode collapse): 0 when identical;
* ``temporal_change``: static video: 0 when every frame is the first;
* ``flicker``: frame-to-frame jumps that reverse (flashes): the second difference in time;
* ``saturation``: the fraction of pixel values at the range limits (burnt-out / over-saturated colour);
* ``brightness`` / ``contrast`` / ``colourfulness``: the mean pixel value, the spread of each channel,
  and the mean spread across the RGB channels of a pixel (0 for grey; lost colour).
"""

from __future__ import annotations

import torch
from torch import Tensor


def diversity(videos: Tensor, samples_per_prompt: int) -> Tensor:
    """Mean over prompts of the mean RMS distance between two samples of the same prompt.

    Args:
        videos: ``(P * N, C, F, H, W)``, prompt-major: rows ``p * N ... p * N + N - 1`` share prompt ``p``
            and differ in their noise.
        samples_per_prompt: ``N >= 2``.
    """
    n = samples_per_prompt
    if n < 2 or videos.shape[0] % n:
        raise ValueError(f"samples_per_prompt={n}: expected >= 2 dividing the batch of {videos.shape[0]}")
    groups = videos.float().flatten(1).reshape(videos.shape[0] // n, n, -1)  # (P, N, D)
    squared = torch.cdist(groups, groups).square() / groups.shape[-1]  # (P, N, N) mean squared difference
    pairs = torch.triu_indices(n, n, offset=1)
    return squared[:, pairs[0], pairs[1]].sqrt().mean()


def temporal_change(videos: Tensor) -> Tensor:
    """Mean absolute difference of consecutive frames ``|x_{f+1} - x_f|`` (0: a still image)."""
    if videos.shape[2] < 2:
        raise ValueError(f"temporal_change needs >= 2 frames, got {videos.shape[2]}")
    return videos.float().diff(dim=2).abs().mean()


def flicker(videos: Tensor) -> Tensor:
    """Mean absolute second difference in time ``|x_{f+1} - 2 x_f + x_{f-1}|``: zero for steady motion
    (a constant velocity), large for a frame that jumps away and back."""
    if videos.shape[2] < 3:
        raise ValueError(f"flicker needs >= 3 frames, got {videos.shape[2]}")
    return videos.float().diff(n=2, dim=2).abs().mean()


def saturation(pixels: Tensor, tolerance: float = 2 / 255) -> Tensor:
    """Fraction of pixel values within ``tolerance`` of ``-1`` or ``1`` (8-bit 0/255 after rounding)."""
    return (pixels.float().abs() >= 1 - tolerance).float().mean()


def colour_statistics(pixels: Tensor) -> dict[str, Tensor]:
    """``brightness`` (mean value), ``contrast`` (std of each channel over a video, averaged) and
    ``colourfulness`` (std across the channels of a pixel, averaged) of ``(B, 3, F, H, W)`` pixels."""
    x = pixels.float()
    return {
        "brightness": x.mean(),
        "contrast": x.flatten(2).std(dim=2).mean(),
        "colourfulness": x.std(dim=1).mean(),
    }


def collapse_statistics(videos: Tensor, samples_per_prompt: int, pixels: bool) -> dict[str, float]:
    """Every statistic above of ``videos`` as floats (the colour ones only for ``pixels``)."""
    stats = {
        "diversity": diversity(videos, samples_per_prompt),
        "temporal_change": temporal_change(videos),
    }
    if videos.shape[2] >= 3:
        stats["flicker"] = flicker(videos)
    if pixels:
        stats["saturation"] = saturation(videos)
        stats.update(colour_statistics(videos))
    return {name: float(value) for name, value in stats.items()}
