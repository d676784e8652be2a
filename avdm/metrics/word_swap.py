"""Does a teacher read a caption's words? Its denoising error on real clips with a word swapped.

For a shapes caption ``"a red circle moving left"`` the probe compares the denoising loss (eq. 2, in the
model's own parameterization, same clips, noise and times) under the true caption, the direction's
*sign* swapped (left <-> right, up <-> down), its *axis* swapped (left <-> up, right <-> down), the colour
swapped (to the next palette colour) and the empty prompt. A word the model ignores costs nothing when
swapped: the swapped loss equals the true one. The gap per noise level tells which failure it is (a
model that knows only the axis of motion is blind to the sign swap alone).

``python -m avdm.metrics.word_swap CKPT --cache ROOT`` prints the table for a run's generator (a teacher
stage trained with ``DenoisingLoss``, or a student), ``--teacher`` for its frozen teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from avdm.data.shapes import COLOURS, caption, parse_caption
from avdm.models.denoiser import Denoiser
from avdm.models.prompt_encoders import PromptEncoder

SIGN = {"left": "right", "right": "left", "up": "down", "down": "up"}
AXIS = {"left": "up", "up": "left", "right": "down", "down": "right"}
VARIANTS = ("true", "sign", "axis", "colour", "empty")


def swapped(text: str, variant: str) -> str:
    """``text`` (a shapes caption) with one word changed: see :data:`VARIANTS`."""
    if variant == "empty":
        return ""
    colour, shape, direction = parse_caption(text)
    if variant == "sign":
        direction = SIGN[direction]
    elif variant == "axis":
        direction = AXIS[direction]
    elif variant == "colour":
        colour = COLOURS[(COLOURS.index(colour) + 1) % len(COLOURS)]
    elif variant != "true":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return caption(colour, shape, direction)


@torch.no_grad()
def word_swap_losses(
    denoiser: Denoiser,
    prompt_encoder: PromptEncoder,
    latents: Tensor,
    captions: Sequence[str],
    times: Sequence[float] = (0.5, 0.8, 0.95),
    seed: int = 0,
    batch_size: int = 64,
) -> dict[float, dict[str, float]]:
    """Mean denoising loss per normalized time ``t`` and caption variant.

    Args:
        latents: real clips ``(N, C, F, H, W)``.
        captions: their ``N`` shapes captions.
        times: noise levels (normalized, in ``(0, 1)``); every variant sees the same noise.

    Returns:
        ``{t: {variant: loss}}`` for the variants of :data:`VARIANTS`.
    """
    if len(captions) != latents.shape[0]:
        raise ValueError(f"got {latents.shape[0]} clips and {len(captions)} captions")
    schedule = denoiser.schedule
    # Every variant's text once: the same embeddings serve every noise level.
    texts = {v: prompt_encoder([swapped(c, v) for c in captions]) for v in VARIANTS}
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    out: dict[float, dict[str, float]] = {}
    for t in times:
        sums = dict.fromkeys(VARIANTS, 0.0)
        for start in range(0, len(captions), batch_size):
            x0 = latents[start : start + batch_size]
            eps = noise[start : start + batch_size]
            tt = torch.full((x0.shape[0],), float(t))
            x_t, target = schedule.add_noise(x0, eps, tt), schedule.target(x0, eps, tt)
            for variant, text in texts.items():
                err = (denoiser(x_t, tt, text[start : start + batch_size]) - target).pow(2).flatten(1).mean(1)
                sums[variant] += float(err.sum())
        out[float(t)] = {v: s / len(captions) for v, s in sums.items()}
    return out


def markdown(losses: dict[float, dict[str, float]]) -> str:
    """The table of :func:`word_swap_losses`, one row per noise level."""
    head = "| t | " + " | ".join(VARIANTS) + " |\n|" + "---|" * (len(VARIANTS) + 1) + "\n"
    rows = [f"| {t:g} | " + " | ".join(f"{row[v]:.4f}" for v in VARIANTS) + " |" for t, row in losses.items()]
    return head + "\n".join(rows) + "\n"
