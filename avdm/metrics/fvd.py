"""Fréchet Video Distance (FVD): the Fréchet distance between Gaussians fitted to video features.

Two feature extractors:

* :class:`I3DFeatureExtractor`, the standard FVD network (Kinetics-400 I3D as TorchScript); numbers
  computed with it are comparable to published FVD numbers (given the same frames, resolution and
  sample counts);
* :class:`RandomProjectionVideoFeatures`, a frozen fixed-seed random 3D-conv network for when the I3D
  file is not available (offline tests, smoke runs). Its numbers are **not** FVD in the published sense
  and are only comparable with other numbers from the same extractor name.

Every :class:`FrechetVideoDistance` carries ``extractor_name`` so that each report names the extractor.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from avdm.errors import MissingWeightsError

I3D_FEATURE_DIM = 400
I3D_RESOLUTION = 224


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite (D, D) matrix by eigendecomposition."""
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


ArrayLike = Tensor | np.ndarray


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Args:
        mu1, mu2: means, shape (D,).
        sigma1, sigma2: covariances, shape (D, D), symmetric positive semi-definite.

    ``tr((sigma1 sigma2)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix ``sigma1^(1/2) sigma2 sigma1^(1/2)`` (same spectrum as ``sigma1 sigma2``), using
    ``eigh`` twice. Unlike ``scipy.linalg.sqrtm`` this needs no regularising epsilon and stays real and
    stable for singular (rank-deficient) covariances, e.g. fewer samples than feature dimensions. Tiny
    negative eigenvalues from round-off are clamped to 0, and so is a round-off negative result.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(x, dtype=torch.float64) for x in (mu1, mu2, sigma1, sigma2))
    dim = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"expected means (D,) and covariances (D, D); got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
            f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}"
        )
    sqrt1 = _psd_sqrt(sigma1)
    middle = sqrt1 @ sigma2 @ sqrt1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    # d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return max(float(distance), 0.0)


def _check_videos(videos: Tensor) -> None:
    """Raise ``ValueError`` unless ``videos`` is (B, 3, F, H, W)."""
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"expected videos of shape (B, 3, F, H, W) in [-1, 1], got {tuple(videos.shape)}")


def _freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients of ``module``'s parameters (also for TorchScript modules); returns it."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module


class I3DFeatureExtractor(nn.Module):
    """The standard FVD feature network: Kinetics-400 I3D, loaded from a local TorchScript file.

    Expected file: ``i3d_torchscript.pt``, the TorchScript port of the TF-Hub FVD I3D used by StyleGAN-V
    and the common FVD code (``common_metrics_on_video_quality``, ``fvd-comparison``). Its forward is
    ``forward(x, rescale: bool, resize: bool, return_features: bool)`` and, with
    ``rescale=False, resize=False, return_features=True``, it maps (B, 3, F, 224, 224) videos in [-1, 1]
    to (B, 400) pre-softmax logits. This file is never downloaded here: set ``eval.i3d_path``.

    Preprocessing (as the common FVD code): clamp to [-1, 1], resize each frame bilinearly
    (``align_corners=False``, no antialiasing) so the shorter side is 224, then centre-crop 224 x 224.
    Published FVD numbers usually use 16 frames; use the same frame count and sample counts to compare.
    """

    feature_dim: int

    def __init__(self, path: str | Path, feature_dim: int = I3D_FEATURE_DIM) -> None:
        super().__init__()
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"The FVD I3D TorchScript file was not found at {str(path)!r}; set eval.i3d_path to a local "
                "copy of i3d_torchscript.pt, or leave eval.i3d_path empty for the non-comparable fallback."
            )
        self.detector = torch.jit.load(str(path), map_location="cpu").eval()
        _freeze(self.detector)
        self.feature_dim = feature_dim

    def train(self, mode: bool = True) -> I3DFeatureExtractor:
        """Stay in eval mode: the detector is frozen."""
        return super().train(False)

    @staticmethod
    def preprocess(videos: Tensor) -> Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, 3, F, 224, 224) float32 in [-1, 1]."""
        _check_videos(videos)
        b, c, f, h, w = videos.shape
        # shorter side -> 224 exactly, longer side scaled by the same factor (rounded up)
        if h <= w:
            size = (I3D_RESOLUTION, math.ceil(w * I3D_RESOLUTION / h))
        else:
            size = (math.ceil(h * I3D_RESOLUTION / w), I3D_RESOLUTION)
        frames = videos.float().clamp(-1, 1).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        top, left = (size[0] - I3D_RESOLUTION) // 2, (size[1] - I3D_RESOLUTION) // 2
        frames = frames[:, :, top : top + I3D_RESOLUTION, left : left + I3D_RESOLUTION]
        return frames.reshape(b, f, c, I3D_RESOLUTION, I3D_RESOLUTION).permute(0, 2, 1, 3, 4).contiguous()

    def forward(self, videos: Tensor) -> Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, feature_dim) I3D features."""
        return self.detector(self.preprocess(videos), rescale=False, resize=False, return_features=True)


class RandomProjectionVideoFeatures(nn.Module):
    """Fallback extractor: frozen random 3D-conv networks. NOT comparable to published FVD numbers.

    Two streams with the same architecture and independent random weights: an appearance stream on the
    frames and a motion stream on half the frame differences ``(x[t+1] - x[t]) / 2`` (zeros for one-frame
    videos), both after resizing frames to 64 x 64. Each stream is three 3x3x3 convolutions (strides
    1x2x2, 2x2x2, 2x2x2; ReLU; He-normal weights from ``torch.Generator().manual_seed(seed)``, zero bias)
    followed by the per-channel spatio-temporal mean and standard deviation, so features are (B, 128).

    Deterministic given ``seed`` (independent of the global RNG); numbers are comparable only with
    numbers from the same :attr:`name`, which includes the seed. Use it for offline tests and relative
    comparisons; report FVD with :class:`I3DFeatureExtractor`.
    """

    VERSION = "fallback-random3dconv-v1"
    CHANNELS = (3, 16, 32, 32)
    STRIDES = ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    RESOLUTION = 64

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.name = f"{self.VERSION}-seed{seed}"
        self.feature_dim = 2 * 2 * self.CHANNELS[-1]
        generator = torch.Generator().manual_seed(seed)
        self.appearance = self._random_convs(generator)
        self.motion = self._random_convs(generator)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def _random_convs(cls, generator: torch.Generator) -> nn.ModuleList:
        """The convolutions of one stream, weights drawn from ``generator``."""
        convs = nn.ModuleList()
        for c_in, c_out, stride in zip(cls.CHANNELS[:-1], cls.CHANNELS[1:], cls.STRIDES):
            conv = nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1)
            std = math.sqrt(2 / (c_in * 27))  # He-normal for a 3x3x3 kernel
            conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * std
            conv.bias.data.zero_()
            convs.append(conv)
        return convs

    def train(self, mode: bool = True) -> RandomProjectionVideoFeatures:
        """Stay in eval mode: the network is frozen."""
        return super().train(False)

    @staticmethod
    def _pooled(x: Tensor, convs: nn.ModuleList) -> Tensor:
        """(B, 3, F, 64, 64) -> (B, 2 * C) mean and std of the last activations over (F, H, W)."""
        for conv in convs:
            x = F.relu(conv(x))
        x = x.flatten(2)
        return torch.cat([x.mean(dim=2), x.std(dim=2, correction=0)], dim=1)

    def forward(self, videos: Tensor) -> Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, 128) features."""
        _check_videos(videos)
        x = videos.to(self.appearance[0].weight.dtype).clamp(-1, 1)
        x = F.interpolate(x, size=(x.shape[2], self.RESOLUTION, self.RESOLUTION), mode="trilinear")
        diff = (x[:, :, 1:] - x[:, :, :-1]) / 2 if x.shape[2] > 1 else torch.zeros_like(x)
        return torch.cat([self._pooled(x, self.appearance), self._pooled(diff, self.motion)], dim=1)


class FrechetVideoDistance(Metric):
    """FVD between the videos passed with ``real=True`` and those passed with ``real=False``.

    States are float64 feature sums, sums of outer products and counts per side, all summed across
    processes (``dist_reduce_fx="sum"``), so the result is the same under DDP as in one process, and
    the same however the videos are split into batches. Call :meth:`update` (not ``forward``, which
    would compute on a single batch) and :meth:`compute` once at the end; the extractor is a frozen
    child module, so it moves with ``.to(device)``.

    Args:
        feature_extractor: maps (B, 3, F, H, W) videos in [-1, 1] to (B, feature_dim) features.
        feature_dim: D, the size of the features.
        extractor_name: names the extractor in every report (FVD values are comparable only for the
            same name).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    real_sum: Tensor
    real_outer: Tensor
    real_count: Tensor
    fake_sum: Tensor
    fake_outer: Tensor
    fake_count: Tensor

    def __init__(self, feature_extractor: nn.Module, feature_dim: int, extractor_name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.feature_extractor = _freeze(feature_extractor.eval())
        self.feature_dim = feature_dim
        self.extractor_name = extractor_name
        shapes = {"sum": (feature_dim,), "outer": (feature_dim, feature_dim), "count": ()}
        for side in ("real", "fake"):
            for state, shape in shapes.items():
                zeros = torch.zeros(shape, dtype=torch.float64)
                self.add_state(f"{side}_{state}", zeros, dist_reduce_fx="sum")

    def train(self, mode: bool = True) -> FrechetVideoDistance:
        """Keep the feature extractor in eval mode whatever the parent module does."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def update(self, videos: Tensor, real: bool) -> None:
        """Add (B, 3, F, H, W) videos in [-1, 1] to the real (``real=True``) or generated side."""
        _check_videos(videos)
        with torch.no_grad():
            features = self.feature_extractor(videos)
        if features.ndim != 2 or features.shape != (videos.shape[0], self.feature_dim):
            raise ValueError(
                f"{self.extractor_name} returned features of shape {tuple(features.shape)}, expected "
                f"({videos.shape[0]}, {self.feature_dim})"
            )
        features = features.to(torch.float64)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + features.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + features.T @ features)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + features.shape[0])

    def _gaussian(self, side: str) -> tuple[Tensor, Tensor]:
        """Mean (D,) and unbiased covariance (D, D) of one side's features."""
        n = getattr(self, f"{side}_count")
        if n < 2:
            raise ValueError(
                f"FVD ({self.extractor_name}) needs at least 2 {side} videos to estimate a covariance, "
                f"got {int(n)}"
            )
        mean = getattr(self, f"{side}_sum") / n
        # unbiased sample covariance: (sum x x^T - n mu mu^T) / (n - 1)
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def compute(self) -> Tensor:
        """FVD as a float64 scalar tensor."""
        mu_real, sigma_real = self._gaussian("real")
        mu_fake, sigma_fake = self._gaussian("fake")
        distance = frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)
        return torch.tensor(distance, dtype=torch.float64, device=mu_real.device)


def build_fvd(
    i3d_path: str | Path | None, seed: int = 0, extractor: str | None = None
) -> FrechetVideoDistance:
    """FVD with the I3D extractor when ``i3d_path`` (config ``eval.i3d_path``) is given, else the fallback;
    ``extractor="shapes"`` uses the shipped shapes classifier (:mod:`avdm.metrics.shapes_classifier`).

    Raises :class:`~avdm.errors.MissingWeightsError` when a path is given but no file is there.
    """
    if extractor == "shapes":
        from avdm.metrics.shapes_classifier import load_classifier

        classifier = load_classifier()
        return FrechetVideoDistance(classifier, classifier.feature_dim, classifier.name)
    if extractor is not None:
        raise ValueError(f"extractor must be None (I3D or the fallback) or 'shapes', got {extractor!r}")
    if i3d_path:
        features: nn.Module = I3DFeatureExtractor(i3d_path)
        name = f"i3d-torchscript:{Path(i3d_path).name}"
    else:
        features = RandomProjectionVideoFeatures(seed)
        name = features.name
    return FrechetVideoDistance(features, features.feature_dim, name)
