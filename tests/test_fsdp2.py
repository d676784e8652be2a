"""Two CPU processes (gloo): DDP keeps ranks identical on sharded data; FSDP2 (``trainer=fsdp2``'s strategy)
gives DDP's weights, holds half of every network per process, and resumes exactly from its sharded
checkpoint, which consolidates into a plain checkpoint for export."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from avdm.training.checkpointing.storage import read_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = [("animatediff", "full"), ("wan", "lora")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Both cases in one two-process launch; ``OUT/FAMILY-ROLES/rank{0,1}.pt``."""
    out = tmp_path_factory.mktemp("fsdp2")
    script = Path(__file__).with_name("fsdp2_script.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
        str(_free_port()), str(script), str(out), *(f"{family}:{roles}" for family, roles in CASES),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=script.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("family", "roles"), CASES)
def test_fsdp2_trains_as_ddp_holds_half_and_resumes_from_its_sharded_checkpoint(runs, family, roles):
    """``animatediff/full``: full-copy generator and fake score, an EMA, activation checkpointing, the 2D
    teacher view on shared weights. ``wan/lora``: generator and fake score as adapters of the one teacher."""
    tmp_path = runs / f"{family}-{roles}"
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))

    # DDP: each rank saw other clips, yet every trainable weight is bit-identical across ranks.
    assert len(rank0["seen"]) == len(rank1["seen"]) > 0 and not set(rank0["seen"]) & set(rank1["seen"])
    assert rank0["ddp_rank_state"].keys() == rank1["ddp_rank_state"].keys()
    for key, value in rank0["ddp_rank_state"].items():
        assert torch.equal(value, rank1["ddp_rank_state"][key]), key

    # FSDP2 gives DDP's weights (float rounding of another reduction order), with clipping active on
    # every update: the gradient norms (over all shards) are DDP's and above the clip norm.
    ddp, fsdp2, resumed = rank0["ddp_run"]["state"], rank0["fsdp2"]["state"], rank0["resumed"]["state"]
    assert int(ddp["generator_steps"]) == int(fsdp2["generator_steps"]) == 3
    assert ddp.keys() == fsdp2.keys()
    if roles == "lora":  # adapters (and the head) only: the frozen teacher comes back from its source
        kept = ("lora_", "discriminator", "generator_ema.n_averaged")
        assert not [k for k in fsdp2 if "." in k and not any(part in k for part in kept)]
    for key, value in ddp.items():
        torch.testing.assert_close(fsdp2[key], value, rtol=1e-4, atol=1e-5, msg=key)
    norms = torch.tensor(rank0["fsdp2"]["norms"])
    assert len(norms) >= 3 and bool((norms > 1e-3).all())  # module.grad_clip_norm=1e-3 in the script
    torch.testing.assert_close(norms, torch.tensor(rank0["ddp_run"]["norms"]), rtol=1e-4, atol=0)

    # Resumed from the sharded checkpoint of step 2, step 3 repeats the uninterrupted run.
    assert rank0["resumed"]["generator_steps"] == 3
    for key, value in fsdp2.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-7, msg=key)

    # Each process holds about half of every network (the frozen teacher, generator, fake score, EMA,
    # text encoder: dim 0 of each weight is split, so a weight of one row lives on one rank); what stays
    # replicated (VAE, discriminator head) is the same on both.
    full = rank0["ddp_bytes"]["networks"]
    for rank in (rank0, rank1):
        assert rank["fsdp2_bytes"]["networks"] <= 0.6 * full
        assert rank["fsdp2_bytes"]["rest"] == rank0["ddp_bytes"]["rest"]
        assert rank["fsdp2_bytes"]["optimizer"] < rank0["ddp_bytes"]["optimizer"]
    assert 0.98 * full <= rank0["fsdp2_bytes"]["networks"] + rank1["fsdp2_bytes"]["networks"] <= 1.02 * full

    # The sharded checkpoint: one shard per rank, no frozen teacher weights, and it consolidates into
    # the plain checkpoint the export, sample and compare commands read.
    step2 = tmp_path / "fsdp2" / "ckpt" / "epoch=0-step=2.ckpt"
    assert sorted(p.name for p in step2.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    stored = [
        k.removeprefix("state_dict.") for k in FileSystemReader(step2).read_metadata().state_dict_metadata
    ]
    stored = [k for k in stored if not k.startswith("optimizer_")]
    assert sorted(stored) == sorted(ddp.keys())
    consolidated = read_checkpoint(step2)
    shapes = read_checkpoint(step2, mmap=True)
    assert consolidated["state_dict"].keys() == shapes["state_dict"].keys() == ddp.keys()
    assert int(consolidated["state_dict"]["generator_steps"]) == 2 and consolidated["global_step"] == 2
    generator = [k for k in ddp if k.startswith("generator.") and k.endswith("weight")]
    assert any(not torch.equal(consolidated["state_dict"][k], fsdp2[k]) for k in generator), "step 3 trained"
    for key, value in consolidated["state_dict"].items():
        assert shapes["state_dict"][key].shape == value.shape == ddp[key].shape, key


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"param_dtype": "fp8"}, r"module\.sharding\.param_dtype='fp8': expected one of float32"),
        ({"reshard": True}, r"module\.sharding\.reshard: unknown key"),
        ({"reshard_after_forward": "yes"}, r"module\.sharding\.reshard_after_forward='yes': expected true"),
    ],
)
def test_bad_sharding_settings_name_the_key(values, message):
    from avdm.errors import ConfigError
    from avdm.training.sharding import ShardingSettings

    with pytest.raises(ConfigError, match=message):
        ShardingSettings.from_config(values)


def test_unet_shard_units_are_the_modules_animatediffs_2d_view_is_built_of(tiny_bundle):
    """Every weight of the 2D teacher view lies in a unit of the motion UNet, units are disjoint, and together
    they hold every weight of it: FSDP2 then gathers what either view runs."""
    from avdm.training.sharding import shard_units

    motion, image = tiny_bundle.video_teacher.model, tiny_bundle.image_teacher.model
    units = shard_units(motion)
    owned = [id(p) for unit in units for p in unit.parameters()]
    assert len(owned) == len(set(owned)) == len(list(motion.parameters()))
    assert {id(p) for p in image.parameters()} <= set(owned)
    assert any("motion_modules" in name for name, m in motion.named_modules() if m in set(units))


def test_transformer_and_text_encoder_units_are_their_blocks():
    from fsdp2_script import WAN_TINY

    from avdm.models.families.wan import build_wan
    from avdm.training.sharding import shard_units

    bundle = build_wan(source="tiny", num_frames=4, resolution=16, tiny=WAN_TINY)
    transformer = bundle.video_teacher.model
    assert shard_units(transformer) == list(transformer.blocks)
    encoder = bundle.prompt_encoder.text_encoder
    layers = shard_units(encoder)
    assert layers and all(type(u).__name__ in encoder._no_split_modules for u in layers)
    assert set(encoder.encoder.layers) <= set(layers)


def test_global_norm_and_clipping_match_torch_on_plain_tensors():
    from avdm.training.sharding import clip_grads_, global_norm

    grads = [torch.randn(3, 4), torch.randn(7), torch.randn(2, 2, 2)]
    ours, theirs = [g.clone() for g in grads], [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(theirs, grads):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    norm = global_norm(ours)
    clip_grads_(ours, 0.5, norm)
    torch.testing.assert_close(norm, expected)
    for mine, p in zip(ours, theirs):
        torch.testing.assert_close(mine, p.grad)


def _fake_sharded(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    for name in (".metadata", "meta.pt", "__0_0.distcp"):
        (folder / name).write_text(tag)
    return folder


def test_a_sharded_save_replaces_the_old_folder_and_a_crash_between_its_renames_is_undone(tmp_path):
    from avdm.training.checkpointing.storage import recover_renamed_checkpoint
    from avdm.training.sharded_strategy import _swap_in

    last = _fake_sharded(tmp_path / "last.ckpt", "old")
    _swap_in(_fake_sharded(tmp_path / ".last.ckpt.tmp", "new"), last)
    assert (last / "meta.pt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt"
    ]
    # Killed after the old folder was moved aside, before the new one was renamed in:
    last.rename(tmp_path / ".last.ckpt.old")
    assert recover_renamed_checkpoint(last) and (last / "meta.pt").read_text() == "new"
    assert not recover_renamed_checkpoint(tmp_path / "other.ckpt")
