"""LoRA roles on one frozen base: the generator and the 2D fake score as peft adapters of the teacher.

Exact where it must be: fresh adapters give the teacher's output bit for bit, one role's weights never
reach another role, no base weight is copied, optimizers hold only their own adapter, checkpoints hold
only adapter weights, and a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from avdm.data.synthetic_latents import SyntheticLatentDataModule
from avdm.errors import ConfigError
from avdm.losses import DenoisingGANLoss, FrameSDMLoss
from avdm.models.families.animatediff import build_animatediff
from avdm.models.lora import AdapterDenoiser
from avdm.training.distillation import DistillationModule
from tests.conftest import TINY_UNET, cpu_trainer

LORA = {"rank": 4, "alpha": 4}


def _bundle():
    torch.manual_seed(0)  # the same teacher weights for every module (adapters are injected in place)
    return build_animatediff(source="tiny", num_frames=4, resolution=32, tiny={"unet": TINY_UNET})


def _module(**kwargs) -> DistillationModule:
    bundle = _bundle()
    losses = {
        "sdm": FrameSDMLoss(num_frames=2, guidance_scale=2.0, fake_score_lora=LORA),
        "gan": DenoisingGANLoss(head_channels=8, head_layers=1),
    }
    return DistillationModule(
        bundle, losses, generator_timesteps=(999, 499), warmup_steps=2, seed=3, generator_lora=LORA, **kwargs
    )


def _inputs(module: DistillationModule):
    torch.manual_seed(1)
    x = torch.randn(2, *module.latent_shape)
    return x, torch.tensor([0.3, 0.8]), module.prompt_encoder(["a red ball moving left", "a blue box"])


@torch.no_grad()
def test_fresh_adapters_are_the_teacher_and_no_weight_is_copied():
    module = _module()
    x, t, text = _inputs(module)
    generator, fake = module.generator.denoiser, module.losses["sdm"].fake_score
    assert isinstance(generator, AdapterDenoiser) and isinstance(fake, AdapterDenoiser)
    assert torch.equal(generator(x, t, text), module.teachers.video(x, t, text))
    assert torch.equal(fake(x, t, text), module.teachers.image(x, t, text))

    # Every role runs the teacher's storages: only the adapters are new (a full copy shares none).
    def base_storages(*modules):
        return {
            p.untyped_storage().data_ptr()
            for m in modules
            for n, p in m.named_parameters()
            if "lora_" not in n
        }

    roles = base_storages(module.generator, module.losses["sdm"].fake_score)
    assert roles and roles <= base_storages(module.teachers)
    full = DistillationModule(_bundle(), {"sdm": FrameSDMLoss(num_frames=2)}, generator_timesteps=(999, 499))
    assert not base_storages(full.generator, full.losses["sdm"].fake_score) & base_storages(full.teachers)


@torch.no_grad()
def test_one_roles_weights_never_reach_another_role():
    module = _module()
    x, t, text = _inputs(module)
    generator, fake = module.generator.denoiser, module.losses["sdm"].fake_score
    teacher_video, teacher_image, fake_before = (
        module.teachers.video(x, t, text),
        module.teachers.image(x, t, text),
        fake(x, t, text),
    )
    for _, p in generator.trainable_parameters():
        p.add_(0.1 * torch.randn_like(p))
    assert not torch.equal(generator(x, t, text), teacher_video), "the generator's adapter acts"
    assert torch.equal(module.teachers.video(x, t, text), teacher_video)
    assert torch.equal(module.teachers.image(x, t, text), teacher_image)
    assert torch.equal(fake(x, t, text), fake_before)
    generator_now = generator(x, t, text)
    for _, p in fake.trainable_parameters():
        p.add_(0.1 * torch.randn_like(p))
    assert torch.equal(generator(x, t, text), generator_now)
    assert torch.equal(module.teachers.image(x, t, text), teacher_image)


def test_optimizers_hold_only_their_own_adapter():
    module = _module()
    optimizers, _ = module.configure_optimizers()
    ids = [{id(p) for g in opt.param_groups for p in g["params"]} for opt in optimizers]
    generator_ids = {id(p) for _, p in module.generator.denoiser.trainable_parameters()}
    fake_ids = {id(p) for _, p in module.losses["sdm"].fake_score.trainable_parameters()}
    assert module.optimizer_names == ["generator", "sdm", "gan"]
    assert ids[0] == generator_ids and ids[1] == fake_ids and not generator_ids & fake_ids
    base_ids = {id(p) for p in module.teachers.parameters() if not p.requires_grad}
    assert not base_ids & set().union(*ids), "no frozen base weight is optimized"
    trainable = sum(p.numel() for opt in optimizers[:2] for g in opt.param_groups for p in g["params"])
    assert trainable < 0.1 * sum(p.numel() for p in module.teachers.video.parameters() if not p.requires_grad)


def test_lora_refuses_what_would_mix_roles():
    with pytest.raises(
        ConfigError, match="module.ema_decay=0.99 cannot be combined with module.generator_lora"
    ):
        _module(ema_decay=0.99)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        _module(gradient_checkpointing=True)


def _fit(module: DistillationModule, root, max_steps: int, ckpt=None) -> L.Trainer:
    trainer = cpu_trainer(root, max_steps)
    data = SyntheticLatentDataModule(module.latent_shape, num_samples=32, batch_size=1, seed=0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return trainer


def test_checkpoint_holds_adapters_only_and_resume_is_exact(tmp_path):
    straight = _module()
    _fit(straight, tmp_path / "a", max_steps=3)
    first = _module()
    trainer = _fit(first, tmp_path / "b", max_steps=2)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    keys = torch.load(ckpt, weights_only=False)["state_dict"].keys()
    head = "losses.gan.discriminator."
    base = [k for k in keys if "." in k and "lora_" not in k and not k.startswith(head)]
    assert keys and not base, base[:5]  # adapters, the discriminator head and the step counters only
    assert any(".generator." in k for k in keys) and any(".fake_score_image." in k for k in keys)

    resumed = _module()
    _fit(resumed, tmp_path / "c", max_steps=3, ckpt=ckpt)
    assert int(resumed.generator_steps) == 3 == int(straight.generator_steps)
    for role in ("generator", "sdm"):
        a = straight.generator.denoiser if role == "generator" else straight.losses["sdm"].fake_score
        b = resumed.generator.denoiser if role == "generator" else resumed.losses["sdm"].fake_score
        for (name, p), (_, q) in zip(a.trainable_parameters(), b.trainable_parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{role}: {name}")
    moved = [p for _, p in straight.generator.denoiser.trainable_parameters() if "lora_B" in _]
    assert any(bool(p.abs().sum() > 0) for p in moved), "training moved the generator's adapter"


@torch.no_grad()
def test_merged_network_is_the_student_as_a_plain_diffusers_model():
    from diffusers import UNetMotionModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    from avdm.models.families.animatediff import VideoUNetDenoiser
    from avdm.models.lora import merged_network

    module = _module()
    x, t, text = _inputs(module)
    generator = module.generator.denoiser
    for _, p in generator.trainable_parameters():
        p.add_(0.1 * torch.randn_like(p))
    teacher_before = module.teachers.video(x, t, text)
    merged = merged_network(generator)
    assert isinstance(merged, UNetMotionModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules()), "no LoRA layer left"
    plain = VideoUNetDenoiser(merged, generator.schedule)
    torch.testing.assert_close(plain(x, t, text), generator(x, t, text), rtol=1e-5, atol=1e-5)
    assert torch.equal(module.teachers.video(x, t, text), teacher_before), "merging a copy leaves the base"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rnk": 4}, "module.generator_lora.rnk: unknown key; accepted keys: rank, alpha, target_modules"),
        ({"rank": 0}, "module.generator_lora.rank=0: expected an integer >= 1"),
        ({"rank": 4, "alpha": -1}, "module.generator_lora.alpha=-1: expected a number > 0"),
        ({"rank": 4, "target_modules": ["nope"]}, "module.generator_lora.target_modules=\\['nope'\\]"),
    ],
)
def test_bad_lora_settings_are_one_line_naming_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        DistillationModule(_bundle(), {"sdm": FrameSDMLoss(num_frames=2)}, generator_lora=settings)
    fake_score = message.replace("module.generator_lora", "loss.sdm.fake_score_lora")
    with pytest.raises(ConfigError, match=fake_score):
        DistillationModule(_bundle(), {"sdm": FrameSDMLoss(num_frames=2, fake_score_lora=settings)})


def test_an_adapter_view_reads_the_base_views_attributes():
    """Export reads view attributes such as a transformer's coordinate ``position`` channels."""
    module = _module()
    generator, teacher = module.generator.denoiser, module.teachers.video
    teacher.position = ("frame", "y")  # as a Wan view with coordinate channels has
    assert generator.position == ("frame", "y") and generator.schedule is teacher.schedule
    with pytest.raises(AttributeError):
        _ = generator.no_such_attribute


def test_the_benchmarks_activation_counter_counts_live_saved_tensors_once():
    """``make bench``'s activation peak: a tensor saved twice counts once, weights not at all, and
    everything is released with the graph."""
    from benchmarks.bench_lora import SavedActivations

    counter = SavedActivations()
    weight = nn.Parameter(torch.randn(8, 8))
    counter.weights = {weight.untyped_storage().data_ptr()}
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(counter._pack, lambda held: held.tensor):
        h = x * x  # saves x twice: one storage
        assert counter.current == x.untyped_storage().nbytes()
        y = (h @ weight).tanh().sum()  # saves h (weight skipped) and tanh's output
        peak = counter.peak
    assert peak == x.untyped_storage().nbytes() + h.untyped_storage().nbytes() + 4 * 4 * 8
    y.backward()
    del h, y
    assert counter.current == 0 and not counter.live
