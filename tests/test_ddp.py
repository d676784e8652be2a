"""Two CPU processes (gloo DDP) run the distillation step: ranks stay identical, data is sharded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
@pytest.mark.parametrize("roles", ["full", "lora"])
def test_two_process_ddp_keeps_ranks_identical_and_shards_data(tmp_path, roles):
    """``lora``: the generator and fake score are adapters of the shared frozen teacher."""
    script = Path(__file__).with_name("ddp_script.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(script), str(tmp_path)] + (["lora"] if roles == "lora" else [])
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["generator_steps"] == rank1["generator_steps"] == 2
    assert rank0["global_step"] == rank1["global_step"] == 2
    # Each rank saw different clips (DistributedSampler shards, no duplicates) ...
    assert len(rank0["seen"]) == len(rank1["seen"]) == 4
    assert not set(rank0["seen"]) & set(rank1["seen"])
    # ... yet gradients were all-reduced, so every trainable weight is bit-identical across ranks.
    assert rank0["state"].keys() == rank1["state"].keys()
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    # And training moved the weights at all (the equality is not that of an untouched init).
    assert int(rank0["state"]["generator_steps"]) == 2
    if roles == "lora":
        adapters = {k: v for k, v in rank0["state"].items() if "lora_" in k}
        assert any(".generator." in k for k in adapters) and any(".fake_score_image." in k for k in adapters)
        assert not [k for k in rank0["state"] if "." in k and "lora_" not in k and "disc_head" not in k]
        moved = [v for k, v in adapters.items() if "lora_B" in k and ".generator." in k]
        assert any(bool(v.abs().sum() > 0) for v in moved), "the generator's adapter was trained"
