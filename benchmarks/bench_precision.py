"""What ``model.teacher_dtype`` saves: bytes of the frozen roles and of the training state, per dtype.

Measured on the shipped teachers' distillation modules (``avdm2_shapes``, ``avdm2_shapes_flow``): the
frozen roles (teachers, discriminator backbone, text encoder, VAE; shared weights counted once) and the
trainable roles (generator, fake score, critic heads) with their AdamW state (two float32 moments per
parameter). Computed for the published sizes of real teachers: a full-copy fake score and generator
(today's default) in float32, the frozen teacher in float32 or bf16.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from avdm.models.denoiser import parameter_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Parameters of the denoiser alone (text encoder and VAE excluded): published sizes.
REAL_TEACHERS = {
    "AnimateDiff v1.5 (SD1.5 UNet + motion modules)": 1.31e9,
    "Wan2.1 1.3B": 1.3e9,
    "Wan2.1 14B": 14e9,
}


def measure(experiment: str, dtype: str) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from avdm.config import CONFIG_DIR
    from avdm.training.build import build_module

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"+experiment={experiment}",
                "paths.output_dir=/tmp/b",
                f"model.teacher_dtype={dtype}",
            ],
        )
    module = build_module(cfg)
    frozen = [p for p in module.parameters() if not p.requires_grad]
    trainable = [p for p in module.parameters() if p.requires_grad]
    trainable_bytes = parameter_bytes(trainable)
    adam = 2 * sum(p.numel() * 4 for p in trainable)
    return {
        "frozen_mb": parameter_bytes(frozen) / 2**20,
        "trainable_mb": trainable_bytes / 2**20,
        "adamw_state_mb": adam / 2**20,
        "total_mb": (parameter_bytes(frozen) + trainable_bytes + adam) / 2**20,
    }


def run(out_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"measured": {}, "computed_gb": {}}
    for experiment in ("avdm2_shapes", "avdm2_shapes_flow"):
        result["measured"][experiment] = {d: measure(experiment, d) for d in ("float32", "bfloat16")}
    for name, n in REAL_TEACHERS.items():
        trainable = 2 * n * 4 + 2 * n * 8  # generator + fake score in float32, two AdamW moments each
        result["computed_gb"][name] = {
            "frozen_fp32": n * 4 / 1e9,
            "frozen_bf16": n * 2 / 1e9,
            "total_fp32_teacher": (n * 4 + trainable) / 1e9,
            "total_bf16_teacher": (n * 2 + trainable) / 1e9,
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "precision.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# model.teacher_dtype: bytes of frozen and trainable roles",
        "",
        "| run | teacher dtype | frozen MB | trainable MB | AdamW state MB | total MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for experiment, rows in result["measured"].items():
        for dtype, r in rows.items():
            lines.append(
                f"| {experiment} | {dtype} | {r['frozen_mb']:.1f} | {r['trainable_mb']:.1f} | "
                f"{r['adamw_state_mb']:.1f} | {r['total_mb']:.1f} |"
            )
    lines += [
        "",
        "Computed for real teachers (denoiser only; generator and fake score: full float32 copies + AdamW):",
        "",
        "| teacher | frozen fp32 GB | frozen bf16 GB | total, fp32 teacher GB | total, bf16 teacher GB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in result["computed_gb"].items():
        lines.append(
            f"| {name} | {r['frozen_fp32']:.1f} | {r['frozen_bf16']:.1f} | {r['total_fp32_teacher']:.1f} | "
            f"{r['total_bf16_teacher']:.1f} |"
        )
    (out_dir / "precision.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
