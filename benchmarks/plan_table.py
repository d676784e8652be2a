"""``python -m benchmarks.plan_table`` (``make plan-table``): the memory plan at the papers' shapes.

AnimateDiff (SD1.5 + motion adapter v1.5) at 16 x 512 x 512 (``+experiment=avdm2_animatediff``), Wan2.1 1.3B
and 14B at 480 x 832 x 81 frames (``+experiment=accvideo``, the 14B by its hub id), each with full copies or
LoRA roles (rank 16), checkpointing off / on, 1 process or FSDP2 over 8; every figure from
``python -m avdm.plan ... --json`` (no weights needed). Writes ``benchmarks/results/plan_table.md``, the table
``docs/memory_plan.md`` and the README show.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = {
    "AnimateDiff 16 x 512^2": (["+experiment=avdm2_animatediff"], True),
    "Wan2.1 1.3B 81 x 480 x 832": (["+experiment=accvideo"], False),
    "Wan2.1 14B 81 x 480 x 832": (
        ["+experiment=accvideo", "model.pretrained.base_model=Wan-AI/Wan2.1-T2V-14B-Diffusers"], False
    ),
}  # fmt: skip
LORA = ["module.generator_lora={rank:16,alpha:16}"]
FAKE_LORA = ["loss.sdm.fake_score_lora={rank:16,alpha:16}"]


def planned(overrides: list[str]) -> dict[str, Any]:
    from avdm.plan import main

    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        main([*overrides, "--json"])
    return json.loads(out.getvalue())


def rows() -> list[dict[str, Any]]:
    found = []
    for model, (base, has_fake_score) in MODELS.items():
        for roles, extra in (("full copies", []), ("LoRA r16", LORA + (FAKE_LORA if has_fake_score else []))):
            for ckpt in (False, True):
                for world in (1, 8):
                    sharding = ["trainer=fsdp2", f"trainer.devices={world}"] if world > 1 else []
                    plan = planned(
                        [*base, *extra, f"module.gradient_checkpointing={str(ckpt).lower()}", *sharding]
                    )
                    state = plan["total"] - plan["activation_peak"]
                    found.append({"model": model, "roles": roles, "checkpointing": ckpt, "processes": world,
                                  "state_bytes": state, "activation_bytes": plan["activation_peak"],
                                  "total_bytes": plan["total"]})  # fmt: skip
    return found


def run(out_dir: Path) -> dict[str, Any]:
    table = rows()
    lines = [
        "| teacher, clip | roles | checkpointing | processes | weights + grads + AdamW GB | activations GB "
        "| total GB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        processes = "1" if r["processes"] == 1 else f"{r['processes']} (FSDP2)"
        ckpt = "on" if r["checkpointing"] else "off"
        lines.append(f"| {r['model']} | {r['roles']} | {ckpt} | {processes} | "
                     f"{r['state_bytes'] / 1e9:.1f} | {r['activation_bytes'] / 1e9:.1f} | "
                     f"{r['total_bytes'] / 1e9:.1f} |")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan_table.md").write_text("\n".join(lines) + "\n")
    (out_dir / "plan_table.json").write_text(json.dumps(table, indent=2))
    return {"rows": table}


if __name__ == "__main__":
    run(Path(__file__).parent / "results")
    print((Path(__file__).parent / "results" / "plan_table.md").read_text())
