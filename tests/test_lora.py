"""LoRA roles on one frozen base: the generator and the 2D fake score as peft adapters of the teacher.

Exact where it must be: fresh adapters give the teacher's output bit for bit, one role's weights never
reach another role, no base weight is copied, optimizers hold only their own adapter, checkpoints hold
only adapter weights, and a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.utils.checkpoint
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


def _perturbed(module: DistillationModule, seed: int = 7) -> DistillationModule:
    """Every adapter moved off its fresh start (B = 0 gives A no gradient), the same for every seed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for role in (module.generator.denoiser, module.losses["sdm"].fake_score):
            for _, p in role.trainable_parameters():
                p.add_(0.1 * torch.randn_like(p))
    return module


def _role_gradients(module: DistillationModule) -> dict[str, torch.Tensor]:
    """Gradients of both adapters through one graph that runs generator -> fake score -> teacher, so the
    backward pass recomputes blocks of one network under three adapter states."""
    x, t, text = _inputs(module)
    generator, fake = module.generator.denoiser, module.losses["sdm"].fake_score
    sample = generator(x, t, text)
    frames = sample[:, :, :1].transpose(1, 2).flatten(0, 1).unsqueeze(2)  # one frame per clip, 2D role
    score = fake(frames, t, text)
    loss = module.teachers.video(sample, t, text).square().mean() + score.square().mean()
    loss.backward()
    grads = {}
    for role, view in (("generator", generator), ("fake", fake)):
        for name, p in view.trainable_parameters():
            grads[f"{role}:{name}"] = p.grad.clone()
    return grads


def test_checkpointed_lora_roles_recompute_under_their_own_adapter():
    """Gradient checkpointing with LoRA roles: bit-equal adapter gradients with and without it; with
    diffusers' default checkpoint call (the recomputation runs under whatever adapter is on in the
    backward pass) they are not."""
    from avdm.models.execution import diffusers_models

    plain = _role_gradients(_perturbed(_module()))
    checkpointed_module = _perturbed(_module(gradient_checkpointing=True))
    assert all(m.is_gradient_checkpointing for m in diffusers_models(checkpointed_module.teachers))
    checkpointed = _role_gradients(checkpointed_module)
    assert plain.keys() == checkpointed.keys() and any("fake:" in k for k in plain)
    for key, grad in plain.items():
        assert grad.abs().sum() > 0, key
        assert torch.equal(checkpointed[key], grad), key

    default = _perturbed(_module())
    for network in diffusers_models(default.teachers):
        network.enable_gradient_checkpointing()  # diffusers' own checkpoint call
    try:
        unguarded = _role_gradients(default)
    except torch.utils.checkpoint.CheckpointError:  # the recomputation saved other tensors: torch refuses
        return
    assert any(not torch.equal(unguarded[k], g) for k, g in plain.items()), "the test cannot tell"


@torch.no_grad()
def test_the_ema_of_a_lora_generator_is_an_adapter_that_averages_it():
    """``module.ema_decay`` with LoRA roles: a second adapter (no copy of the base), the first update
    copies the generator's adapter, each later one is ``d * ema + (1 - d) * adapter``; sampling uses it."""
    module = _module(ema_decay=0.75)
    generator = module.generator.denoiser
    averaged = module.sampling_generator().denoiser
    assert isinstance(averaged, AdapterDenoiser) and averaged.model is generator.model
    assert averaged.adapter != generator.adapter
    assert not any(p.requires_grad for _, p in averaged.trainable_parameters())

    def moved() -> dict[str, torch.Tensor]:
        for _, p in generator.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
        return {n: p.clone() for n, p in generator.trainable_parameters()}

    def ema() -> list[torch.Tensor]:
        return [p.clone() for _, p in averaged.trainable_parameters()]

    torch.manual_seed(2)
    first = moved()
    module.generator_ema.update_parameters(module.generator)
    assert all(torch.equal(e, g) for e, g in zip(ema(), first.values(), strict=True))
    second = moved()
    module.generator_ema.update_parameters(module.generator)
    for e, a, b in zip(ema(), first.values(), second.values(), strict=True):
        torch.testing.assert_close(e, 0.75 * a + 0.25 * b, rtol=1e-6, atol=1e-7)
    x, t, text = _inputs(module)
    assert not torch.equal(averaged(x, t, text), generator(x, t, text))
    assert not torch.equal(averaged(x, t, text), module.teachers.video(x, t, text))
    optimized = {
        id(p) for opt in module.configure_optimizers()[0] for g in opt.param_groups for p in g["params"]
    }
    assert not optimized & {id(p) for _, p in averaged.trainable_parameters()}


def _fit(module: DistillationModule, root, max_steps: int, ckpt=None) -> L.Trainer:
    trainer = cpu_trainer(root, max_steps)
    data = SyntheticLatentDataModule(module.latent_shape, num_samples=32, batch_size=1, seed=0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return trainer


@pytest.mark.parametrize(
    "settings", [{}, {"gradient_checkpointing": True, "ema_decay": 0.9}], ids=["plain", "checkpointed-ema"]
)
def test_checkpoint_holds_adapters_only_and_resume_is_exact(tmp_path, settings):
    straight = _module(**settings)
    _fit(straight, tmp_path / "a", max_steps=3)
    first = _module(**settings)
    trainer = _fit(first, tmp_path / "b", max_steps=2)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    keys = torch.load(ckpt, weights_only=False)["state_dict"].keys()
    head = "losses.gan.discriminator."
    counters = ("generator_ema.n_averaged",)  # the EMA's update count, beside the step counters
    base = [k for k in keys if "." in k and "lora_" not in k and not k.startswith(head) and k not in counters]
    assert keys and not base, base[:5]  # adapters, the discriminator head and the step counters only
    assert any(".generator." in k for k in keys) and any(".fake_score_image." in k for k in keys)

    assert ("ema_decay" in settings) == any(".generator_ema." in k for k in keys)

    resumed = _module(**settings)
    _fit(resumed, tmp_path / "c", max_steps=3, ckpt=ckpt)
    assert int(resumed.generator_steps) == 3 == int(straight.generator_steps)
    roles = {
        "generator": lambda m: m.generator.denoiser,
        "sdm": lambda m: m.losses["sdm"].fake_score,
        "ema": lambda m: m.sampling_generator().denoiser,
    }
    for role, view in roles.items():
        a, b = view(straight), view(resumed)
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


def test_a_lora_student_with_an_ema_exports_the_averaged_adapter(tmp_path):
    """``avdm.export`` of a LoRA run with an EMA writes the EMA adapter (the default) or, with
    ``use_ema=False``, the generator's, under the names diffusers loads (``unet.<module>.lora_A.weight``)."""
    from safetensors.torch import load_file

    from avdm.export import export_student

    module = _module(ema_decay=0.5)
    generator = module.generator.denoiser
    with torch.no_grad():
        for _ in range(2):
            for _, p in generator.trainable_parameters():
                p.add_(0.1 * torch.randn_like(p))
            module.generator_ema.update_parameters(module.generator)
    averaged = module.sampling_generator().denoiser
    for use_ema, role in ((True, averaged), (False, generator)):
        folder = export_student(module, tmp_path / f"ema-{use_ema}", use_ema=use_ema)
        written = load_file(folder / "lora" / "pytorch_lora_weights.safetensors")
        expected = {f"unet.{n.replace(f'.{role.adapter}.', '.')}": p for n, p in role.trainable_parameters()}
        assert written.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(written[key].float(), value.detach()), (use_ema, key)
    ema_weights = [p for _, p in averaged.trainable_parameters()]
    weights = [p for _, p in generator.trainable_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ema_weights, weights, strict=True))
