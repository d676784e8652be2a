"""FVD: the Fréchet distance against scipy, the metric's accumulation, and the two extractors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from avdm.errors import MissingWeightsError
from avdm.metrics.fvd import (
    FrechetVideoDistance,
    I3DFeatureExtractor,
    RandomProjectionVideoFeatures,
    build_fvd,
    frechet_distance,
)

# Identity extractor on (B, 3, 1, 2, 2) "videos": 12 features, the pixels themselves.
PIXEL_SHAPE = (3, 1, 2, 2)
PIXEL_DIM = 12


def pixel_fvd() -> FrechetVideoDistance:
    return FrechetVideoDistance(nn.Flatten(1), PIXEL_DIM, "identity-pixels")


def as_videos(features: Tensor) -> Tensor:
    """(N, 12) features -> (N, 3, 1, 2, 2) inputs that the identity extractor maps back to them."""
    return features.reshape(-1, *PIXEL_SHAPE)


def scipy_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The usual FID/FVD reference implementation (pytorch-fid / StyleGAN-V)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def random_cov(rng: np.random.Generator, dim: int, rank: int) -> np.ndarray:
    a = rng.standard_normal((dim, rank))
    return a @ a.T / rank


def samples_with_moments(n: int, mean: Tensor, cov: Tensor, seed: int) -> Tensor:
    """(n, D) float64 samples whose empirical mean and unbiased covariance are exactly ``mean``, ``cov``."""
    x = torch.randn(n, mean.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(dim=0)
    whiten = torch.linalg.cholesky(torch.cov(x.T))
    x = torch.linalg.solve_triangular(whiten, x.T, upper=False).T  # now cov(x) = I
    return x @ torch.linalg.cholesky(cov).T + mean


RANKS = [(1, 1, 1), (5, 5, 5), (16, 16, 16), (12, 4, 12), (8, 3, 5)]  # (dim, rank of sigma1, rank of sigma2)


@pytest.mark.parametrize(("dim", "rank1", "rank2"), RANKS)
def test_frechet_distance_matches_scipy(dim: int, rank1: int, rank2: int) -> None:
    rng = np.random.default_rng(dim * 100 + rank1)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim) * 0.5
    s1, s2 = random_cov(rng, dim, rank1), random_cov(rng, dim, rank2)
    expected = scipy_frechet(mu1, s1, mu2, s2)
    got = frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), torch.from_numpy(mu2), s2)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6)  # symmetric


def test_frechet_distance_is_zero_for_equal_singular_gaussians() -> None:
    rng = np.random.default_rng(0)
    mu, cov = rng.standard_normal(10), random_cov(rng, 10, 3)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-10


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_identical_sets_give_zero() -> None:
    videos = torch.randn(20, *PIXEL_SHAPE, generator=torch.Generator().manual_seed(0))
    metric = pixel_fvd()
    metric.update(videos, real=True)
    metric.update(videos, real=False)
    value = metric.compute()
    assert value.dtype == torch.float64 and value.ndim == 0
    assert abs(value.item()) < 1e-9


def test_two_gaussians_give_the_analytic_distance() -> None:
    # sigma_real = c I, sigma_fake = Q diag(d) Q^T: tr((sigma_real sigma_fake)^(1/2)) = sqrt(c) sum sqrt(d)
    gen = torch.Generator().manual_seed(1)
    c = 0.7
    d = torch.rand(PIXEL_DIM, generator=gen, dtype=torch.float64) * 2 + 0.1
    q, _ = torch.linalg.qr(torch.randn(PIXEL_DIM, PIXEL_DIM, generator=gen, dtype=torch.float64))
    mean_real = torch.randn(PIXEL_DIM, generator=gen, dtype=torch.float64)
    mean_fake = mean_real + 0.3
    sigma_real = c * torch.eye(PIXEL_DIM, dtype=torch.float64)
    sigma_fake = q @ torch.diag(d) @ q.T
    expected = (
        (mean_real - mean_fake).square().sum() + c * PIXEL_DIM + d.sum() - 2 * math.sqrt(c) * d.sqrt().sum()
    ).item()

    metric = pixel_fvd()
    metric.update(as_videos(samples_with_moments(50, mean_real, sigma_real, seed=2)), real=True)
    metric.update(as_videos(samples_with_moments(40, mean_fake, sigma_fake, seed=3)), real=False)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0  # a non-trivial distance


def test_batch_splits_and_merged_states_give_the_same_result() -> None:
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(30, *PIXEL_SHAPE, generator=gen)
    fake = torch.randn(25, *PIXEL_SHAPE, generator=gen) * 1.5 + 0.2

    whole = pixel_fvd()
    whole.update(real, real=True)
    whole.update(fake, real=False)
    expected = whole.compute().item()
    assert expected > 0.5

    split = pixel_fvd()
    for chunk in fake.split(7):
        split.update(chunk, real=False)
    for chunk in real.split([1, 10, 19]):
        split.update(chunk, real=True)
    assert split.compute().item() == pytest.approx(expected, rel=1e-9)

    # two "ranks" each seeing part of the data, merged as DDP's sum reduction would
    rank0, rank1 = pixel_fvd(), pixel_fvd()
    rank0.update(real[:12], real=True)
    rank0.update(fake[:20], real=False)
    rank1.update(real[12:], real=True)
    rank1.update(fake[20:], real=False)
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(expected, rel=1e-9)


def test_fewer_than_two_samples_raises() -> None:
    metric = pixel_fvd()
    metric.update(torch.randn(5, *PIXEL_SHAPE), real=True)
    with pytest.raises(ValueError, match="at least 2 fake"):
        metric.compute()
    metric.update(torch.randn(1, *PIXEL_SHAPE), real=False)
    with pytest.raises(ValueError, match="identity-pixels.*got 1"):
        metric.compute()
    metric.update(torch.randn(1, *PIXEL_SHAPE), real=False)
    assert metric.compute().item() >= 0.0


def test_update_rejects_bad_shapes() -> None:
    metric = pixel_fvd()
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        metric.update(torch.randn(4, 3, 2, 2), real=True)
    with pytest.raises(ValueError, match="expected \\(4, 12\\)"):
        metric.update(torch.randn(4, 3, 2, 2, 2), real=True)  # 24 features, not 12


def static_noise(n: int, seed: int, frames: int = 8, size: int = 32) -> Tensor:
    """(n, 3, F, H, W) uniform noise frozen over time, in [-1, 1]."""
    frame = torch.rand(n, 3, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return frame.expand(-1, -1, frames, -1, -1).contiguous()


def moving_blobs(n: int, seed: int, frames: int = 8, size: int = 32) -> Tensor:
    """(n, 3, F, H, W) one coloured Gaussian blob per video moving in a straight line on black, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.rand(n, 2, generator=gen) * size
    velocity = (torch.rand(n, 2, generator=gen) - 0.5) * 6
    colour = torch.rand(n, 3, generator=gen)
    t = torch.arange(frames, dtype=torch.float32)
    centre = start[:, None, :] + velocity[:, None, :] * t[None, :, None]  # (n, F, 2)
    grid = torch.arange(size, dtype=torch.float32)
    dy = grid[None, None, :, None] - centre[..., 0, None, None]
    dx = grid[None, None, None, :] - centre[..., 1, None, None]
    blob = torch.exp(-(dy**2 + dx**2) / (2 * 4.0**2))  # (n, F, H, W)
    return (colour[:, :, None, None, None] * blob[:, None]) * 2 - 1


def fvd_between(extractor: RandomProjectionVideoFeatures, a: Tensor, b: Tensor) -> float:
    metric = FrechetVideoDistance(extractor, extractor.feature_dim, extractor.name)
    metric.update(a, real=True)
    metric.update(b, real=False)
    return metric.compute().item()


def test_fallback_extractor_is_deterministic_given_the_seed() -> None:
    videos = moving_blobs(3, seed=0)
    torch.manual_seed(123)  # the global RNG must not matter
    a = RandomProjectionVideoFeatures(seed=7)
    torch.manual_seed(456)
    b = RandomProjectionVideoFeatures(seed=7)
    c = RandomProjectionVideoFeatures(seed=8)
    features = a(videos)
    assert features.shape == (3, a.feature_dim)
    assert torch.equal(features, b(videos))
    assert not torch.allclose(features, c(videos))
    assert a.name == b.name == "fallback-random3dconv-v1-seed7" and c.name != a.name
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training


def test_fallback_extractor_separates_different_video_sets() -> None:
    extractor = RandomProjectionVideoFeatures(seed=0)
    blobs = moving_blobs(32, seed=1)
    noise = static_noise(16, seed=2)
    frozen = blobs[16:, :, :1].expand(-1, -1, blobs.shape[2], -1, -1)  # the same blobs, not moving
    same = fvd_between(extractor, blobs[:16], blobs[16:])
    assert same > 0.0
    assert fvd_between(extractor, blobs[:16], noise) > 10 * same
    assert fvd_between(extractor, blobs[:16], frozen) > 2 * same  # sees motion, not only frame content


def test_missing_i3d_path_names_the_config_key(tmp_path) -> None:
    missing = tmp_path / "i3d_torchscript.pt"
    with pytest.raises(MissingWeightsError, match=r"eval\.i3d_path"):
        I3DFeatureExtractor(missing)
    with pytest.raises(MissingWeightsError, match=r"eval\.i3d_path"):
        build_fvd(str(missing))


def test_build_fvd_without_a_path_uses_the_named_fallback() -> None:
    metric = build_fvd(None, seed=3)
    assert isinstance(metric.feature_extractor, RandomProjectionVideoFeatures)
    assert metric.extractor_name == "fallback-random3dconv-v1-seed3"
    assert metric.feature_dim == metric.feature_extractor.feature_dim


class _FakeI3D(nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, features = input shape and range."""

    def forward(self, x: Tensor, rescale: bool, resize: bool, return_features: bool) -> Tensor:
        assert not rescale and not resize and return_features
        b = x.shape[0]
        stats = torch.stack([x.amin(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4)), x.mean(dim=(1, 2, 3, 4))], 1)
        shape = torch.tensor(x.shape[1:], dtype=x.dtype).expand(b, 4)
        return torch.cat([shape, stats], dim=1)


def test_i3d_extractor_loads_torchscript_and_feeds_224_frames(tmp_path) -> None:
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_FakeI3D()).save(str(path))
    extractor = I3DFeatureExtractor(path, feature_dim=7)
    videos = torch.linspace(-1.5, 1.5, 2 * 3 * 4 * 16 * 24).reshape(2, 3, 4, 16, 24)  # H < W, overshoots
    features = extractor(videos)
    assert features[:, :4].tolist() == [[3, 4, 224, 224]] * 2
    assert features[:, 4].min() >= -1 - 1e-6 and features[:, 5].max() <= 1 + 1e-6  # clamped to [-1, 1]

    metric = build_fvd(str(path))
    assert metric.extractor_name.startswith("i3d")
