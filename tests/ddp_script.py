"""Run by tests/test_ddp.py as ``python tests/ddp_script.py OUT_DIR [lora]`` (Lightning's DDP launcher
re-runs this script once per rank). Each rank writes its trainable weights and the batches it saw. With
``lora`` the generator and the fake score are rank-4 adapters of the one frozen teacher."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from conftest import TINY_UNET  # noqa: E402  (this script's folder is on sys.path)

from avdm.data import SyntheticLatentDataModule  # noqa: E402
from avdm.losses import DenoisingGANLoss, FrameSDMLoss  # noqa: E402
from avdm.models.animatediff import build_animatediff  # noqa: E402
from avdm.training.module import FROZEN_PREFIXES, DistillationModule  # noqa: E402


class RecordBatches(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.extend(batch["latents"].flatten(1).sum(1).tolist())


def main(out: Path, lora: bool) -> None:
    torch.manual_seed(0)
    bundle = build_animatediff(source="tiny", num_frames=4, resolution=32, tiny={"unet": TINY_UNET})
    torch.manual_seed(0)
    settings = {"rank": 4} if lora else None
    losses = {
        "sdm": FrameSDMLoss(num_frames=2, reduction="mean", fake_score_lora=settings),
        "gan": DenoisingGANLoss(),
    }
    module = DistillationModule(
        bundle, losses, generator_timesteps=(999, 499), warmup_steps=1, generator_lora=settings
    )
    record = RecordBatches()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(
        module, datamodule=SyntheticLatentDataModule(bundle.latent_shape, num_samples=16, batch_size=1)
    )
    state = {
        k: v
        for k, v in module.state_dict().items()
        if not k.startswith(FROZEN_PREFIXES)
        and (not lora or "lora_" in k or "disc_head" in k or "." not in k)
    }
    torch.save(
        {
            "state": state,
            "seen": record.seen,
            "generator_steps": int(module.generator_steps),
            "global_step": trainer.global_step,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), lora=sys.argv[2:] == ["lora"])
