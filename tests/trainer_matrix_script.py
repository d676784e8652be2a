"""Run by tests/test_trainer_matrix.py: each trainer recipe of ``conf/trainer/`` x each teacher family x
{full copies, LoRA roles}, 2 generator steps each, through ``avdm.training.fit.fit`` as ``avdm.train``
runs it (the composed config, the same validation, callbacks and checkpointing).

``python tests/trainer_matrix_script.py OUT TRAINER [TRAINER ...]`` for the one-process recipe (``cpu``);
``python -m torch.distributed.run --nproc-per-node 2 tests/trainer_matrix_script.py OUT TRAINER ...`` for the
two-process ones (``ddp_cpu``, ``fsdp2``, ``fsdp2_cpu``; one launch pays the imports and the process group
once). Rank 0 writes ``OUT/TRAINER-FAMILY-ROLES.json``: the run's metrics, or the one line it ended with.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hydra import compose, initialize_config_dir  # noqa: E402

from avdm.config import CONFIG_DIR  # noqa: E402
from avdm.errors import AvdmUserError  # noqa: E402
from avdm.training.fit import fit  # noqa: E402

FAMILIES = {
    "animatediff": ["+experiment=avdm2_tiny"],
    "wan": [
        "+experiment=avdm2_tiny",
        "model=wan_tiny",
        "model.image_teacher=shared",
        "data.latent_shape=[4,4,8,8]",
        "module.generator_param_groups=[{pattern:'.*',lr:1e-5}]",
    ],  # fmt: skip
}
ROLES = {
    "full": ["module.ema_decay=0.9"],
    "lora": ["module.generator_lora={rank:4}", "loss.sdm.fake_score_lora={rank:4}"],
}
# What the two-process recipes need on CPU processes; nothing else of the recipe is changed.
ON_CPU = {
    "fsdp2": ["trainer.accelerator=cpu", "trainer.devices=2"],  # param_dtype stays bfloat16, as on GPUs
}
QUICK = [
    "trainer.max_steps=2", "++trainer.enable_progress_bar=false", "callbacks.samples.every_n_steps=0",
    "callbacks.diagnostics=null", "callbacks.collapse=null", "callbacks.plots=null",
]  # fmt: skip


def overrides(trainer: str, family: str, roles: str, out: Path) -> list[str]:
    run = out / f"{trainer}-{family}-{roles}"
    return [
        *FAMILIES[family], f"trainer={trainer}", *ON_CPU.get(trainer, []), *ROLES[roles], *QUICK,
        f"paths.output_dir={run}",
    ]  # fmt: skip


def main(out: Path, trainers: list[str]) -> None:
    rank = int(os.environ.get("RANK", "0"))
    for trainer in trainers:
        for family in FAMILIES:
            for roles in ROLES:
                with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                    cfg = compose("train", overrides=overrides(trainer, family, roles, out))
                try:
                    metrics = fit(cfg)
                    result = {"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
                except AvdmUserError as err:  # a combination refused: its one line
                    result = {"refused": str(err)}
                if rank == 0:
                    gen = result.get("metrics", {}).get("gen/loss")
                    result["finite"] = gen is not None and math.isfinite(gen)
                    (out / f"{trainer}-{family}-{roles}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
