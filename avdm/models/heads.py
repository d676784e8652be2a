"""Trainable discriminator heads over the features of a frozen diffusion encoder.

AVDM2 (Sec. 4.1): the discriminator is the video teacher's UNet encoder, frozen, plus a trainable
head that "extracts features from three spatial scales, processes each through independent
convolutional layers, and then concatenates these features. A final convolutional layer transforms
the aggregated features into the discriminator's logit output." AccVideo's timestep-aware
discriminator reuses the same head over its own choice of teacher layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avdm.config_schema import check_range


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of normalized times ``t (B,)`` (scaled to ``[0, 1000]``), shape ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MultiScaleDiscriminatorHead(nn.Module):
    """Patch logits from S feature maps of a frozen encoder, conditioned on ``t`` and the text.

    Architecture (choices where the paper is silent):

    * one branch per scale: ``num_layers`` x (Conv3d ``k_t x 3 x 3`` -> GroupNorm -> SiLU), ``C_i -> hidden``.
      ``temporal_kernel=3`` gives true 3D convolutions, so the head sees motion; ``temporal_kernel=1``
      gives 2D convolutions applied to every frame;
    * every branch output is average-pooled to the smallest ``(F, H, W)`` among the scales and the
      branches are concatenated (``S * hidden`` channels);
    * conditioning: ``MLP(sinusoidal(t)) + Linear(mean_L text)`` is added as a per-channel bias, then SiLU;
    * a final Conv3d ``k_t x 3 x 3`` to one channel gives a logit per patch.

    Args:
        in_channels: channel count ``C_i`` of each feature scale, shallow to deep.
        text_dim: ``D`` of the text embeddings ``(B, L, D)``.
        hidden_channels: width of each branch.
        num_layers: conv layers per branch (>= 1).
        temporal_kernel: temporal kernel size of the convolutions (odd, >= 1).
        time_embedding_dim: size of the sinusoidal time embedding.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        text_dim: int,
        hidden_channels: int = 64,
        num_layers: int = 2,
        temporal_kernel: int = 3,
        time_embedding_dim: int = 128,
    ) -> None:
        super().__init__()
        if len(in_channels) < 1 or any(c < 1 for c in in_channels):
            raise ValueError(f"in_channels must be non-empty positive ints, got {list(in_channels)}")
        # The rules of the loss arguments these come from (FeatureGANLoss: head_channels, head_layers).
        check_range("hidden_channels", hidden_channels, name="head_channels")
        check_range("num_layers", num_layers, name="head_layers")
        check_range("temporal_kernel", temporal_kernel)
        kernel, padding = (temporal_kernel, 3, 3), (temporal_kernel // 2, 1, 1)
        groups = math.gcd(hidden_channels, max(1, min(32, hidden_channels // 8)))  # >= 8 channels a group

        def branch(c_in: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(num_layers):
                c = c_in if i == 0 else hidden_channels
                layers += [
                    nn.Conv3d(c, hidden_channels, kernel, padding=padding),
                    nn.GroupNorm(groups, hidden_channels),
                    nn.SiLU(),
                ]
            return nn.Sequential(*layers)

        width = hidden_channels * len(in_channels)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.time_embedding_dim = time_embedding_dim
        self.branches = nn.ModuleList(branch(c) for c in self.in_channels)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embedding_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.text_proj = nn.Linear(text_dim, width)
        self.out = nn.Conv3d(width, 1, kernel, padding=padding)

    def forward(self, features: Sequence[Tensor], t: Tensor, text: Tensor) -> Tensor:
        """Logits ``(B, N)``, one per patch of the common grid (``N = F' H' W'``).

        Args:
            features: ``S`` maps ``(B, C_i, F_i, H_i, W_i)`` in the order of ``in_channels``.
            t: normalized times ``(B,)`` of the noisy input the features were computed on.
            text: text embeddings ``(B, L, D)``.
        """
        if len(features) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} feature maps, got {len(features)}")
        dtype = self.out.weight.dtype
        size = [min(f.shape[d] for f in features) for d in (2, 3, 4)]
        h = torch.cat(
            [
                F.adaptive_avg_pool3d(branch(f.to(dtype)), size)
                for branch, f in zip(self.branches, features, strict=True)
            ],
            dim=1,
        )
        cond = self.time_mlp(timestep_embedding(t, self.time_embedding_dim).to(dtype))
        cond = cond + self.text_proj(text.to(dtype).mean(dim=1))
        h = F.silu(h + cond[:, :, None, None, None])
        return self.out(h).flatten(1)
