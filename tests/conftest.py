"""Shared fixtures: everything offline, tiny, on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_UNET = {
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_heads": 2,
    "motion_attention_heads": 2,
    "norm_num_groups": 8,
}


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one compute thread each, and the same for the
    # processes tests start (oversubscribed OpenMP threads spin and slow a 50 s test to 230 s).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_every_test():
    """Tests draw random tensors; a fixed seed per test keeps every run of the suite the same."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_bundle():
    """A tiny AnimateDiff teacher family: latents (4, 4, 16, 16), text (B, 16, 32). Do not modify it."""
    from avdm.models.families.animatediff import build_animatediff

    torch.manual_seed(0)
    return build_animatediff(source="tiny", num_frames=4, resolution=32, tiny={"unet": TINY_UNET})


@pytest.fixture(scope="session")
def tiny_text(tiny_bundle):
    return tiny_bundle.prompt_encoder(["a red ball moving left", "a blue box moving up"])


@pytest.fixture(scope="session")
def tiny_unet_sizes():
    return dict(TINY_UNET)


def cpu_trainer(root, max_steps: int, **kwargs):
    """A quiet one-process CPU Lightning trainer for tests (no logger, checkpoints, bars or summary
    unless ``kwargs`` say otherwise)."""
    import lightning as L

    settings = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
    }
    return L.Trainer(max_steps=max_steps, **{**settings, **kwargs})
