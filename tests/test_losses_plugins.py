"""The plugin contract, checked on every loss with tiny AnimateDiff teachers (batch 2, 4 frames, 16x16)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from avdm.errors import ConfigError
from avdm.losses import (
    ConsistencyDistillationLoss,
    DenoisingGANLoss,
    DenoisingLoss,
    DistillationLoss,
    FrameSDMLoss,
    StepContext,
    TeacherBank,
    TrajectoryGANLoss,
    TrajectoryRegressionLoss,
    VideoSDMLoss,
)
from avdm.losses.sdm import trainable_copy
from avdm.models.denoiser import count_parameter_storage, freeze_
from avdm.models.families.animatediff import build_animatediff
from avdm.models.generator import FewStepGenerator

B = 2


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two cores, often shared with another test run: two intra-op threads then stall for seconds at a time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Env:
    teachers: TeacherBank
    generator: FewStepGenerator
    text: torch.Tensor
    uncond_text: torch.Tensor
    batch: dict[str, Any]
    latent_shape: tuple[int, ...]

    def context(self, **overrides: Any) -> StepContext:
        """A generator-phase context: ``x0_fake`` is the generator's first step, with gradient."""
        z = torch.randn(B, *self.latent_shape)
        x0_fake = self.generator.simulate(z, self.text, k=0).x0
        kwargs = dict(
            x0_fake=x0_fake,
            text=self.text,
            batch=self.batch,
            teachers=self.teachers,
            generator=self.generator,
            uncond_text=self.uncond_text,
        )
        return StepContext(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def env() -> Env:
    torch.manual_seed(0)
    bundle = build_animatediff(
        source="tiny", num_frames=4, resolution=32, tiny={"unet": {"block_out_channels": [32, 64, 64]}}
    )
    generator = FewStepGenerator(trainable_copy(bundle.video_teacher), timesteps=[999, 499])
    teachers = TeacherBank(freeze_(bundle.video_teacher), freeze_(bundle.image_teacher))
    prompts = ["a red ball moving left", "a blue box"]
    text, uncond = bundle.prompt_encoder(prompts), bundle.prompt_encoder([""] * B)
    shape = bundle.latent_shape
    batch = {
        "latents": torch.randn(B, *shape),
        "trajectory": torch.randn(B, 3, *shape),
        "trajectory_t": torch.tensor([0.999, 0.5, 0.25]),
    }
    return Env(teachers, generator, text, uncond, batch, shape)


SMALL_HEAD = {"head_channels": 8, "head_layers": 1}
PLUGINS: dict[str, Callable[[], DistillationLoss]] = {
    "denoising": lambda: DenoisingLoss(),
    "frame_sdm": lambda: FrameSDMLoss(num_frames=2, guidance_scale=3.0),
    "frame_sdm_dmd2_mean": lambda: FrameSDMLoss(
        num_frames=4, guidance_scale=2.0, guidance_convention="dmd2", reduction="mean"
    ),
    "video_sdm": lambda: VideoSDMLoss(guidance_scale=2.0),
    "gan": lambda: DenoisingGANLoss(**SMALL_HEAD),
    "gan_hinge_2d": lambda: DenoisingGANLoss(
        loss_type="hinge", temporal_kernel=1, feature_layers=["down_blocks.1", "mid_block"], **SMALL_HEAD
    ),
    "trajectory_regression": lambda: TrajectoryRegressionLoss(),
    "trajectory_regression_huber": lambda: TrajectoryRegressionLoss(
        distance="pseudo_huber", huber_c=0.1, target="final"
    ),
    "trajectory_gan": lambda: TrajectoryGANLoss(feature_layers=["down_blocks.0", "mid_block"], **SMALL_HEAD),
    "consistency": lambda: ConsistencyDistillationLoss(num_solver_steps=4, guidance_scale=3.0),
}


def _grads(params: Any) -> list[torch.Tensor | None]:
    return [p.grad for p in params]


def _has_nonzero_grad(params: Any) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in _grads(params))


def _zero(env: Env, plugin: DistillationLoss) -> None:
    env.generator.zero_grad(set_to_none=True)
    plugin.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(PLUGINS))
def test_generator_and_critic_gradients_reach_only_their_own_parameters(env: Env, name: str) -> None:
    torch.manual_seed(1)
    plugin = PLUGINS[name]()
    plugin.bind(env.teachers)
    teacher_params = list(env.teachers.parameters())
    assert teacher_params and not any(p.requires_grad for p in teacher_params)

    # Generator phase: the loss reaches the generator (through the frozen teacher for the GANs), nothing else.
    _zero(env, plugin)
    out = plugin.generator_loss(env.context())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(torch.isfinite(v).all() and not v.requires_grad for v in out.logs.values())
    out.loss.backward()
    assert _has_nonzero_grad(env.generator.parameters())
    assert all(g is None for g in _grads(teacher_params))
    assert all(g is None for g in _grads(plugin.critic_parameters()))

    # Critic phase: on the detached context, only critic_parameters() receive gradient.
    _zero(env, plugin)
    critic = plugin.critic_loss(env.context().detached())
    if critic is None:
        assert not plugin.has_critic
        return
    assert plugin.has_critic
    assert critic.loss.ndim == 0 and torch.isfinite(critic.loss)
    critic.loss.backward()
    assert _has_nonzero_grad(plugin.critic_parameters())
    assert all(g is None for g in _grads(env.generator.parameters()))
    assert all(g is None for g in _grads(teacher_params))
    assert not env.teachers.video.training and not env.teachers.image.training


@pytest.mark.parametrize("cls", [FrameSDMLoss, VideoSDMLoss])
def test_sdm_fake_score_is_an_independent_trainable_copy(env: Env, cls: type) -> None:
    plugin = cls()
    plugin.bind(env.teachers)
    teacher = env.teachers.image if cls is FrameSDMLoss else env.teachers.video
    fake = plugin.fake_score
    assert type(fake) is type(teacher) and fake.training
    assert all(p.requires_grad for p in fake.parameters())
    assert count_parameter_storage(fake, teacher) == 2 * count_parameter_storage(teacher)
    fake.eval()
    assert not fake.training, "train()/eval() must work on the copy of a freeze_()-d teacher"
    assert list(plugin.critic_parameters()) == list(fake.parameters())


def test_sdm_gradient_is_zero_right_after_bind_without_guidance(env: Env) -> None:
    # The fake score starts as the teacher, so eps_real == eps_fake and eq. 8 vanishes (DMD's fixed point).
    plugin = VideoSDMLoss(guidance_scale=1.0)
    plugin.bind(env.teachers)
    ctx = env.context()
    out = plugin.generator_loss(ctx)
    assert out.logs["grad_abs_mean"] == 0 and out.loss == 0
    assert out.logs["norm"] > 0


def test_gan_default_layers_span_distinct_scales(env: Env) -> None:
    plugin = DenoisingGANLoss(**SMALL_HEAD)
    plugin.bind(env.teachers)
    # tiny UNet on 16x16: down_blocks.0 -> 8x8, down_blocks.1/2 and mid_block -> 4x4.
    assert plugin.feature_layers == ["down_blocks.0", "down_blocks.2", "mid_block"]
    assert plugin.discriminator.in_channels == (32, 64, 64)
    assert {n.split(".")[0] for n, _ in plugin.named_parameters()} == {"discriminator"}


BAD_ARGS = [
    (FrameSDMLoss, {"t_min": 0.5, "t_max": 0.5}, "t_min/t_max"),
    (FrameSDMLoss, {"t_min": 0.9, "t_max": 0.2}, "t_min/t_max"),
    (FrameSDMLoss, {"t_min": -0.1}, "t_min/t_max"),
    (VideoSDMLoss, {"t_max": 1.5}, "t_min/t_max"),
    (FrameSDMLoss, {"weight": -1.0}, "weight"),
    (FrameSDMLoss, {"num_frames": 0}, "num_frames"),
    (FrameSDMLoss, {"guidance_convention": "cfg"}, "guidance_convention"),
    (VideoSDMLoss, {"reduction": "max"}, "reduction"),
    (VideoSDMLoss, {"norm_eps": 0.0}, "norm_eps"),
    (VideoSDMLoss, {"fake_score_weighting": "snr"}, "fake_score_weighting"),
    (DenoisingGANLoss, {"t_min": 0.6, "t_max": 0.5}, "t_min/t_max"),
    (DenoisingGANLoss, {"loss_type": "wgan"}, "loss_type"),
    (DenoisingGANLoss, {"weight": -0.5}, "weight"),
    (DenoisingGANLoss, {"feature_layers": []}, "feature_layers"),
    (DenoisingGANLoss, {"temporal_kernel": 2}, "temporal_kernel"),
    (DenoisingGANLoss, {"probe_shape": [4, 2, 8]}, "probe_shape"),
    (TrajectoryRegressionLoss, {"distance": "l1"}, "distance"),
    (TrajectoryRegressionLoss, {"huber_c": 0.0}, "huber_c"),
    (TrajectoryRegressionLoss, {"target": "first"}, "target"),
    (TrajectoryGANLoss, {"loss_type": "lsgan"}, "loss_type"),
    (TrajectoryGANLoss, {"head_channels": 0}, "head_channels"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD_ARGS)
def test_bad_constructor_arguments_raise(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bad_call_time_arguments_raise(env: Env) -> None:
    sdm = FrameSDMLoss(num_frames=5)
    sdm.bind(env.teachers)
    with pytest.raises(ValueError, match="num_frames must be <= the clip's frame count 4"):
        sdm.generator_loss(env.context())

    gan = DenoisingGANLoss(**SMALL_HEAD)
    gan.bind(env.teachers)
    wrong = {**env.batch, "latents": torch.randn(B, 4, 2, 16, 16)}
    with pytest.raises(ValueError, match=r"batch\['latents'\]"):
        gan.critic_loss(env.context(batch=wrong).detached())

    reg = TrajectoryRegressionLoss()
    cases = [
        ({"trajectory": torch.randn(B, 1, *env.latent_shape)}, r"batch\['trajectory'\]"),
        ({"trajectory_t": torch.tensor([0.2, 0.5, 0.9])}, "strictly decreasing"),
        ({"trajectory_t": torch.tensor([1.5, 0.5, 0.0])}, r"in \[0, 1\]"),
        ({"trajectory_t": torch.tensor([0.9, 0.5])}, r"batch\['trajectory_t'\]"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            reg.generator_loss(env.context(batch={**env.batch, **change}))


def test_sdm_without_image_teacher_raises(env: Env) -> None:
    with pytest.raises(ConfigError, match="no image teacher"):
        FrameSDMLoss().bind(TeacherBank(env.teachers.video, None))
