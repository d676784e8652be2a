"""Every trainer recipe of ``conf/trainer/`` x each teacher family x {full copies, LoRA roles}: 2 generator
steps each, as ``avdm.train`` runs them (``tests/trainer_matrix_script.py``), the two-process recipes on 2
CPU processes (gloo). ``trainer=fsdp2`` keeps its ``param_dtype: bfloat16`` (the GPU recipe's gathered
weights), which once failed for AnimateDiff at the first critic phase (a float32 buffer in a bf16 forward).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("trainer_matrix_script.py")
FAMILIES, ROLES = ("animatediff", "wan"), ("full", "lora")
TWO_PROCESS = ("ddp_cpu", "fsdp2", "fsdp2_cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, trainers: tuple[str, ...], processes: int) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        launcher += ["--master-port", str(_free_port())]
    command = [*launcher, str(SCRIPT), str(out), *trainers]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=out)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], dict]:
    out = tmp_path_factory.mktemp("matrix")
    _launch(out, ("cpu",), 1)
    _launch(out, TWO_PROCESS, 2)
    results = {}
    for trainer in ("cpu", *TWO_PROCESS):
        for family in FAMILIES:
            for roles in ROLES:
                path = out / f"{trainer}-{family}-{roles}.json"
                results[trainer, family, roles] = json.loads(path.read_text()) if path.exists() else {}
    return results


@pytest.mark.slow
def test_every_trainer_recipe_trains_each_family_with_full_copies_and_lora_roles(matrix) -> None:
    for case, result in matrix.items():
        assert "refused" not in result, f"{case}: {result.get('refused')}"
        metrics = result.get("metrics", {})
        assert metrics.get("generator_steps") == 2 and metrics.get("critic_steps") == 4, (case, metrics)
        assert result["finite"], case
        assert math.isfinite(metrics["critic/sdm/loss"]) and math.isfinite(metrics["critic/gan/loss"]), case


@pytest.mark.slow
def test_fsdp2_in_float32_trains_as_ddp_and_in_bf16_close_to_it(matrix) -> None:
    """Same seed, same per-rank batches: FSDP2 with float32 gathered weights (``fsdp2_cpu``) gives DDP's
    losses; with bf16 gathered weights (``fsdp2``) they move by bf16 rounding, not more."""
    for family in FAMILIES:
        for roles in ROLES:
            ddp = matrix["ddp_cpu", family, roles]["metrics"]["gen/loss"]
            fp32 = matrix["fsdp2_cpu", family, roles]["metrics"]["gen/loss"]
            bf16 = matrix["fsdp2", family, roles]["metrics"]["gen/loss"]
            assert fp32 == pytest.approx(ddp, rel=1e-4), (family, roles)
            assert bf16 != fp32, f"{family}/{roles}: bf16 gathered weights left the loss bit-equal"
            assert bf16 == pytest.approx(fp32, rel=0.05), (family, roles)
