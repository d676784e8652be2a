"""DistillationModule: step counting, frozen teachers, checkpoints and exact resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from avdm.data import SyntheticLatentDataModule
from avdm.losses.base import DistillationLoss, LossOutput, StepContext
from avdm.losses.denoising import DenoisingLoss
from avdm.training.distillation import DistillationModule
from tests.conftest import cpu_trainer


class MeanCritic(DistillationLoss):
    """A minimal plugin with a critic: a linear score on channel means, real vs fake."""

    def __init__(self, weight: float = 0.1) -> None:
        super().__init__(weight)
        self.critic = nn.Linear(4, 1)

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        loss = -self.critic(ctx.x0_fake.mean((2, 3, 4))).mean()
        return LossOutput(loss, {"loss": loss.detach()})

    def critic_loss(self, ctx: StepContext) -> LossOutput:
        real = self.critic(ctx.batch["latents"].mean((2, 3, 4)))
        fake = self.critic(ctx.x0_fake.mean((2, 3, 4)))
        loss = nn.functional.softplus(-real).mean() + nn.functional.softplus(fake).mean()
        return LossOutput(loss, {"loss": loss.detach()})


def _module(bundle, **kwargs):
    torch.manual_seed(0)  # the probe critic's initialization
    losses = {"denoising": DenoisingLoss(), "probe": MeanCritic()}
    return DistillationModule(
        bundle,
        losses,
        generator_timesteps=(999, 499),
        warmup_steps=2,
        critic_steps_per_generator_step=2,
        seed=3,
        **kwargs,
    )


def _data(bundle):
    return SyntheticLatentDataModule(bundle.latent_shape, num_samples=32, batch_size=1, seed=0)


def _trainer(tmp_path, max_steps):
    return cpu_trainer(tmp_path, max_steps)


def test_max_steps_counts_generator_steps_and_teachers_stay_frozen(tiny_bundle, tmp_path):
    module = _module(tiny_bundle)
    teacher_before = {k: v.clone() for k, v in module.teachers.state_dict().items()}
    gen_before = [p.detach().clone() for p in module.generator.parameters()]
    critic_before = module.losses["probe"].critic.weight.detach().clone()
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(module, datamodule=_data(tiny_bundle))
    assert trainer.global_step == 3 == int(module.generator_steps)
    assert int(module.iterations) == 6 and int(module.critic_steps) == 6
    assert all(torch.equal(v, teacher_before[k]) for k, v in module.teachers.state_dict().items())
    assert not module.teachers.training and not module.teachers.video.model.training
    assert all(p.grad is None for p in module.teachers.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(module.generator.parameters(), gen_before))
    assert not torch.equal(module.losses["probe"].critic.weight, critic_before)
    # Warm-up of 2 generator steps has ended: the LR is the configured one.
    assert trainer.optimizers[0].param_groups[0]["lr"] == 2e-5
    # Critic warm-up is counted in generator steps too: 2 generator steps = 4 critic steps.
    assert trainer.optimizers[1].param_groups[0]["lr"] == 2e-5
    assert trainer.lr_scheduler_configs[1].scheduler.lr_lambdas[0](2) < 1.0


def test_checkpoint_holds_trainable_weights_only_and_resume_is_exact(tiny_bundle, tmp_path):
    straight = _module(tiny_bundle)
    _trainer(tmp_path / "a", max_steps=6).fit(straight, datamodule=_data(tiny_bundle))

    first = _module(tiny_bundle)
    trainer = _trainer(tmp_path / "b", max_steps=3)
    trainer.fit(first, datamodule=_data(tiny_bundle))
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert not any(k.startswith(("teachers.", "prompt_encoder.", "vae.")) for k in state["state_dict"])
    assert any(k.startswith("generator.") for k in state["state_dict"])
    assert state["avdm_teacher_sources"]["image_teacher"].startswith("shared")

    resumed = _module(tiny_bundle)
    _trainer(tmp_path / "c", max_steps=6).fit(resumed, datamodule=_data(tiny_bundle), ckpt_path=ckpt)
    assert int(resumed.generator_steps) == 6 and int(resumed.iterations) == int(straight.iterations)
    for (name, a), b in zip(straight.generator.named_parameters(), resumed.generator.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(
        straight.losses["probe"].critic.weight, resumed.losses["probe"].critic.weight, rtol=0, atol=0
    )


class NaNAfter(DistillationLoss):
    """Returns NaN for the first ``bad_calls`` generator losses, then a finite loss."""

    def __init__(self, bad_calls: int) -> None:
        super().__init__(1.0)
        self.bad_calls, self.calls = bad_calls, 0

    def generator_loss(self, ctx: StepContext) -> LossOutput:
        self.calls += 1
        loss = ctx.x0_fake.square().mean()
        if self.calls <= self.bad_calls:
            loss = loss * float("nan")
        return LossOutput(loss, {})


def test_a_transient_nonfinite_loss_is_skipped_and_counted(tiny_bundle, tmp_path):
    module = DistillationModule(
        tiny_bundle,
        {"nan_probe": NaNAfter(1)},
        generator_timesteps=(999, 499),
        critic_steps_per_generator_step=1,
        max_consecutive_nonfinite=3,
    )
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=_data(tiny_bundle))
    assert (
        int(module.nonfinite_skips) == 1 and int(module.generator_steps) == 2 and int(module.iterations) == 3
    )


def test_repeated_nonfinite_losses_stop_training_naming_the_term(tiny_bundle, tmp_path):
    from avdm.training.update import NonFiniteLossError

    module = DistillationModule(
        tiny_bundle,
        {"nan_probe": NaNAfter(10)},
        generator_timesteps=(999, 499),
        critic_steps_per_generator_step=1,
        max_consecutive_nonfinite=2,
    )
    before = [p.detach().clone() for p in module.generator.parameters()]
    with pytest.raises(NonFiniteLossError, match="nan_probe.*2 consecutive.*max_consecutive_nonfinite=2"):
        _trainer(tmp_path, max_steps=5).fit(module, datamodule=_data(tiny_bundle))
    assert int(module.generator_steps) == 0 and int(module.nonfinite_skips) == 2
    assert all(torch.equal(p, b) for p, b in zip(module.generator.parameters(), before))


def test_ema_follows_the_generator_and_samples_are_written(tiny_bundle, tmp_path):
    import av

    from avdm.training.callbacks.samples import SampleVideos

    module = _module(tiny_bundle, ema_decay=0.5)
    samples = SampleVideos(str(tmp_path), every_n_steps=1, prompts=["a red ball moving left", "a blue box"])
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[samples],
    )
    init = next(module.generator_ema.module.parameters()).detach().clone()
    trainer.fit(module, datamodule=_data(tiny_bundle))
    ema, live = next(module.generator_ema.module.parameters()), next(module.generator.parameters())
    assert not torch.equal(ema, init) and not torch.equal(ema, live)
    assert [p.name for p in samples.written] == ["step_000001.mp4", "step_000002.mp4"]
    with av.open(str(samples.written[-1])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    c, f, h, w = tiny_bundle.latent_shape
    assert len(frames) == f and frames[0].shape == (2 * h, 2 * 2 * w, 3)  # 1 x 2 grid, VAE upsamples 2x
    assert module.sample(["a"], seed=1).shape == (1, c, f, h, w)
    torch.testing.assert_close(module.sample(["a"], seed=1), module.sample(["a"], seed=1))


def test_pixel_batches_are_encoded_with_the_teacher_vae(tiny_bundle):
    module = _module(tiny_bundle)
    c, f, h, w = tiny_bundle.latent_shape
    batch = module.with_latents({"pixels": torch.rand(2, 3, f, 2 * h, 2 * w) * 2 - 1, "captions": ["a", "b"]})
    assert batch["latents"].shape == (2, c, f, h, w)


def test_bad_video_counts_of_the_data_module_reach_the_logs(tiny_bundle, tmp_path):
    class CountingData(SyntheticLatentDataModule):
        def bad_video_counts(self) -> dict[str, int]:
            return {"corrupt": 2, "too_short": 0}

    module = DistillationModule(
        tiny_bundle,
        {"denoising": DenoisingLoss()},
        generator_timesteps=(999, 499),
        critic_steps_per_generator_step=1,
    )
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=CountingData(tiny_bundle.latent_shape, num_samples=4, batch_size=1))
    assert trainer.callback_metrics["data/bad_videos/corrupt"] == 2
    assert trainer.callback_metrics["data/bad_videos/too_short"] == 0


def test_plain_denoising_runs_no_generator_sample(tiny_bundle):
    assert not DistillationModule(tiny_bundle, {"denoising": DenoisingLoss()}).needs_sample
    assert _module(tiny_bundle).needs_sample  # the probe critic reads x0_fake
