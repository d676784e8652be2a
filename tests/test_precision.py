"""Frozen roles in bf16, trainable roles with float32 masters, and a bf16-mixed run on CPU."""

from __future__ import annotations

import math

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from avdm.config import CONFIG_DIR
from avdm.training.build import build_module
from avdm.training.fit import fit


def _cfg(out, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={out}",
                "+experiment=avdm2_tiny",
                "~logger",
                "callbacks.samples=null",
                "trainer.enable_progress_bar=false",
                *overrides,
            ],
        )


def test_frozen_roles_are_bf16_and_trainable_copies_start_exactly_at_the_float32_teacher(tmp_path):
    cfg = _cfg(tmp_path, "model.teacher_dtype=bfloat16")
    module = build_module(cfg)
    teacher32 = instantiate(cfg.model).video_teacher  # the same tiny weights, float32
    reference = teacher32.state_dict()
    assert {p.dtype for p in module.teachers.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.prompt_encoder.parameters()} == {torch.bfloat16}
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    generator = module.generator.denoiser.state_dict()
    fake = module.losses["sdm"].fake_score.state_dict()
    for key, value in reference.items():
        assert torch.equal(generator[key], value), key  # copied before the cast: full precision
        assert torch.equal(module.teachers.video.state_dict()[key], value.to(torch.bfloat16)), key
    assert any(torch.equal(fake[k], reference[k]) for k in fake if k in reference)
    frozen_bytes = sum(p.numel() * p.element_size() for p in module.teachers.parameters())
    assert frozen_bytes * 2 == sum(p.numel() * 4 for p in teacher32.parameters()), "half the bytes"


def test_bf16_mixed_run_keeps_finite_losses_fp32_masters_and_a_bf16_teacher(tmp_path):
    overrides = ("model.teacher_dtype=bfloat16", "trainer.precision=bf16-mixed", "trainer.max_steps=1")
    metrics = fit(_cfg(tmp_path, *overrides))
    assert metrics["generator_steps"] == 1 and metrics["nonfinite_skips"] == 0
    losses = {k: v for k, v in metrics.items() if k.endswith("/loss")}
    assert {"gen/sdm/loss", "gen/gan/loss", "critic/sdm/loss", "critic/gan/loss"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert {v.dtype for k, v in state.items() if k.startswith("generator.") and v.is_floating_point()} == {
        torch.float32
    }
