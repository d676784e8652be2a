"""The memory plan (``python -m avdm.plan``, :mod:`avdm.training.memory`): the activation model against
autograd's saved bytes on tiny blocks (real CPU tensors and meta), and the command's contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

from avdm.plan import main as plan_main
from avdm.training.memory import blocks, networks
from benchmarks.bench_plan import measure_unet_stages, measure_wan_block, plan_unet_stages

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOLERANCE = 0.15


@pytest.mark.parametrize(
    ("device", "dtype", "trainable", "attention"),
    [
        ("cpu", torch.float32, True, "flash"),  # real tensors; CPU's SDPA is the fused flash kernel
        ("meta", torch.bfloat16, True, "flash"),
        ("meta", torch.float32, True, "math"),  # meta's own SDPA: the math path (half inputs upcast there)
        ("meta", torch.bfloat16, False, "flash"),  # a frozen teacher the gradient passes through
    ],
)
def test_wan_block_plan_is_within_15_percent_of_saved_bytes(
    device: str, dtype: torch.dtype, trainable: bool, attention: str
) -> None:
    heads, head_dim, ffn, tokens, text = 4, 16, 160, 96, 12
    args = (heads, ffn, tokens, False, text, head_dim, torch.device(device), dtype, trainable)
    if attention == "math":  # measure_wan_block swaps in the flash kernel; keep meta's math path instead
        sdpa = torch.nn.functional.scaled_dot_product_attention
        with mock.patch("avdm.training.memory.saved_tensors._flash", sdpa):
            measured = measure_wan_block(*args)
    else:
        measured = measure_wan_block(*args)
    e = torch.finfo(dtype).bits // 8
    planned = blocks.wan_block(tokens, heads * head_dim, heads, ffn, text, tokens, e, trainable, attention)
    assert abs(planned / measured - 1) < TOLERANCE, (planned, measured)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_unet_stage_plan_is_within_15_percent_of_saved_bytes(device: str, checkpointing: bool) -> None:
    from avdm.models.families.animatediff import tiny_motion_unet

    def build() -> torch.nn.Module:
        return tiny_motion_unet(block_out_channels=(32, 64, 64), cross_attention_dim=32, norm_num_groups=8)

    measured = measure_unet_stages(8, 4, checkpointing, build, text=(5, 32), device=torch.device(device))
    planned = plan_unet_stages(build().config, 8, 4, checkpointing, text=5)
    for stage, saved in measured.items():
        assert abs(planned[stage] / saved - 1) < TOLERANCE, (stage, planned[stage], saved)


def test_checkpointing_keeps_less_than_the_full_pass() -> None:
    config = type("Config", (), {})()
    config.__dict__.update(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, ffn_dim=128,
                           num_layers=6, text_dim=32)  # fmt: skip
    full = networks.Pass(batch=1, frames=4, height=16, width=16, text=8, e=2, trainable=True)
    ckpt = networks.Pass(**{**full.__dict__, "checkpointing": True})
    assert networks.wan_pass(config, ckpt) < networks.wan_pass(config, full) / 2


def _plan_json(capsys: pytest.CaptureFixture[str], *overrides: str) -> dict:
    plan_main([*overrides, "--json"])
    return json.loads(capsys.readouterr().out)


def test_the_command_plans_avdm2_animatediff_without_weights() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "avdm.plan", "+experiment=avdm2_animatediff"],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = ("frozen base", "text encoder", "VAE", "generator", "sdm fake score", "gan discriminator head",
            "activation peak", "total")  # fmt: skip
    for row in rows:
        assert row in done.stdout, (row, done.stdout)


def test_json_has_every_role_and_twice_the_activations_at_twice_the_batch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    four = _plan_json(capsys, "+experiment=avdm2_shapes")
    eight = _plan_json(capsys, "+experiment=avdm2_shapes", "data.batch_size=8")
    roles = [k for k, v in four.items() if isinstance(v, dict)]
    assert {"generator", "sdm fake score", "gan discriminator head"} <= set(roles), roles
    assert all({"weights", "gradients", "adamw"} <= set(four[r]) for r in roles)
    held = sum(four[r]["weights"] + four[r]["adamw"] for r in roles)
    assert four["total"] == held + max(four[r]["gradients"] for r in roles) + four["activation_peak"]
    assert 1.8 <= eight["activation_peak"] / four["activation_peak"] <= 2.2
    lora = _plan_json(capsys, "+experiment=avdm2_shapes", "module.generator_lora={rank:4}")
    assert lora["generator (LoRA r4)"]["weights"] < four["generator"]["weights"] / 10


def test_strict_plan_over_the_device_exits_2_naming_a_setting_that_fits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    total = _plan_json(capsys, "+experiment=avdm2_shapes")["total"]
    limit_gb = 0.8 * total / 1e9
    with pytest.raises(SystemExit) as stop:
        plan_main(["+experiment=avdm2_shapes", f"plan.device_memory_gb={limit_gb}", "plan.strict=true"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "would fit: " in err, err
    first = err.split("would fit: ")[1].split(" (")[0]  # the cheapest setting that fits, re-planned here
    replanned = _plan_json(capsys, "+experiment=avdm2_shapes", *first.split())
    assert replanned["total"] <= limit_gb * 1e9, (first, replanned["total"])


@pytest.mark.parametrize(
    "override",
    ["plan.bogus=1", "plan.device_memory_gb=-3", "plan.attention=slow", "data.batch_size=abc", "--pretty"],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], override: str) -> None:
    with pytest.raises(SystemExit) as stop:
        plan_main(["+experiment=avdm2_shapes", override])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("avdm: error:"), err
