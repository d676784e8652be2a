"""An avdm loss inside someone else's LightningModule (the example of docs/using_a_loss_elsewhere.md)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from avdm.losses import FrameSDMLoss, StepContext, TeacherBank
from avdm.models.denoiser import freeze_
from avdm.models.families.animatediff import build_animatediff
from avdm.models.generator import FewStepGenerator


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two cores, often shared with another test run: two intra-op threads then stall for seconds at a time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MyDistiller(L.LightningModule):
    """Not avdm's module: one generator, one avdm loss, its critic, manual optimization."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        bundle = build_animatediff(source="tiny", num_frames=4, resolution=32)
        self.latent_shape = bundle.latent_shape
        self.prompt_encoder = freeze_(bundle.prompt_encoder)
        self.generator = FewStepGenerator(copy.deepcopy(bundle.video_teacher), timesteps=[999, 499])
        self.teachers = TeacherBank(freeze_(bundle.video_teacher), freeze_(bundle.image_teacher))
        self.sdm = FrameSDMLoss(num_frames=2, guidance_scale=3.0)
        self.sdm.bind(self.teachers)  # builds the fake score (a trainable copy of the image teacher)
        self.losses: list[tuple[float, float]] = []

    def configure_optimizers(self):
        return (
            torch.optim.Adam(self.generator.parameters(), lr=1e-4),
            torch.optim.Adam(self.sdm.critic_parameters(), lr=1e-4),
        )

    def training_step(self, prompts: list[str], batch_idx: int) -> None:
        opt_g, opt_c = self.optimizers()
        text, uncond = self.prompt_encoder(prompts), self.prompt_encoder([""] * len(prompts))
        z = torch.randn(len(prompts), *self.latent_shape, device=self.device)
        ctx = StepContext(
            x0_fake=self.generator.simulate(z, text, k=0).x0,
            text=text,
            batch={},
            teachers=self.teachers,
            generator=self.generator,
            uncond_text=uncond,
        )

        with self.toggled_optimizer(opt_g):  # generator step
            gen = self.sdm.generator_loss(ctx)
            opt_g.zero_grad()
            self.manual_backward(self.sdm.weight * gen.loss)
            opt_g.step()
        with self.toggled_optimizer(opt_c):  # fake-score step on the detached sample
            critic = self.sdm.critic_loss(ctx.detached())
            opt_c.zero_grad()
            self.manual_backward(critic.loss)
            opt_c.step()
        self.losses.append((gen.loss.item(), critic.loss.item()))


def test_an_avdm_loss_trains_inside_a_foreign_lightning_module() -> None:
    torch.manual_seed(0)
    model = MyDistiller()
    before_g = [p.detach().clone() for p in model.generator.parameters()]
    before_c = [p.detach().clone() for p in model.sdm.critic_parameters()]
    before_teacher = [p.detach().clone() for p in model.teachers.parameters()]
    prompts = ["a red ball moving left", "a blue box", "a green circle", "a white square"] * 2
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(prompts, batch_size=2))

    assert len(model.losses) >= 2
    assert all(torch.isfinite(torch.tensor(pair)).all() for pair in model.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before_g, model.generator.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_c, model.sdm.critic_parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_teacher, model.teachers.parameters(), strict=True))
