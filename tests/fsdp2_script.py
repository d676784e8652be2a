"""Run by tests/test_fsdp2.py under ``torchrun --nproc-per-node 2`` (gloo, CPU):
``python -m torch.distributed.run ... tests/fsdp2_script.py OUT FAMILY:ROLES [FAMILY:ROLES ...]``, each
case into ``OUT/FAMILY-ROLES/`` (one launch: the imports and the process group are paid once).

One process pair trains the same tiny run three times: with DDP for 3 generator steps; with FSDP2
(``ShardedStrategy``) for 3 steps, saving a sharded checkpoint at step 2; with FSDP2 again from that
checkpoint to step 3. ``ROLES``: ``full`` (full-copy generator and fake score) or ``lora`` (rank-4
adapters of the one frozen teacher), both with an EMA of the generator and activation checkpointing.
Every rank writes its DDP weights, the clips it saw and its bytes; rank 0 also the FSDP2 runs' weights
(gathered) and gradient norms.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import TINY_UNET  # noqa: E402  (this script's folder is on sys.path)
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402

from avdm.data import SyntheticLatentDataModule  # noqa: E402
from avdm.losses import DenoisingGANLoss, FrameSDMLoss  # noqa: E402
from avdm.models.families.animatediff import build_animatediff  # noqa: E402
from avdm.models.families.wan import build_wan  # noqa: E402
from avdm.training.distillation import DistillationModule  # noqa: E402
from avdm.training.sharded_strategy import ShardedStrategy  # noqa: E402
from avdm.training.sharding import local_bytes, networks, reshard_all  # noqa: E402

WAN_TINY = {
    "transformer": {
        "patch_size": [1, 2, 2],
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "latent_channels": 4,
        "freq_dim": 32,
        "ffn_dim": 32,
        "num_layers": 2,
        "rope_max_seq_len": 32,
    },
    "vae": {"base_dim": 8, "dim_mult": [1, 2], "num_res_blocks": 1, "temporal_downsample": [False]},
    "text": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_length": 16},
}


CLIP = 1e-3


class RecordNorms(L.Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.extend(batch["latents"].flatten(1).sum(1).tolist())

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        value = trainer.callback_metrics.get("grad_norm/generator")
        if value is not None:
            self.norms.append(float(value))


def build(family: str, roles: str) -> DistillationModule:
    torch.manual_seed(0)
    if family == "animatediff":
        unet = {**TINY_UNET, "block_out_channels": [16, 32]}
        bundle = build_animatediff(source="tiny", num_frames=4, resolution=16, tiny={"unet": unet})
    else:
        bundle = build_wan(source="tiny", num_frames=4, resolution=16, tiny=WAN_TINY, image_teacher="shared")
    torch.manual_seed(0)
    lora = {"rank": 4} if roles == "lora" else None
    losses = {
        "sdm": FrameSDMLoss(num_frames=2, reduction="mean", fake_score_lora=lora),
        "gan": DenoisingGANLoss(),
    }
    return DistillationModule(
        bundle,
        losses,
        generator_timesteps=(999, 499),
        warmup_steps=1,
        grad_clip_norm=CLIP,  # small: clipping acts on every update, with norms over sharded gradients
        critic_steps_per_generator_step=2,
        generator_lora=lora,
        ema_decay=0.9,  # a copy's average, or with LoRA roles the EMA adapter
        gradient_checkpointing=True,  # with LoRA roles: recomputed under each block's forward adapter
    )


def fit(module, strategy, out: Path, max_steps: int, ckpt_path=None, save_at: int | None = None):
    norms = RecordNorms()
    callbacks: list[L.Callback] = [norms]
    if save_at:
        callbacks.append(ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=save_at, save_top_k=-1))
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        logger=False,
        enable_checkpointing=bool(save_at),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=out,
    )
    data = SyntheticLatentDataModule(module.latent_shape, num_samples=16, batch_size=1)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, norms


def trainable_state(module: DistillationModule) -> dict[str, torch.Tensor]:
    """Every checkpointed tensor as a full tensor (gathered on rank 0 when sharded)."""
    keep = module.checkpoint_keys()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module, options=options)
    return {k: v.clone() for k, v in state.items() if k in keep}


def byte_counts(module: DistillationModule, trainer: L.Trainer) -> dict[str, int]:
    """This process's bytes: parameters of the networks (what FSDP2 shards), of the rest (VAE, heads),
    trainable ones, and optimizer states. Roots keep their own weights gathered from a forward until the
    next backward (sharding.py): resharded first, to count what is stored."""
    reshard_all(module)
    in_networks = {id(p) for net in networks(module) for p in net.parameters()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    optim = [
        t
        for opt in trainer.optimizers
        for state in opt.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.ndim > 0
    ]
    return {
        "networks": local_bytes([p for p in module.parameters() if id(p) in in_networks]),
        "rest": local_bytes([p for p in module.parameters() if id(p) not in in_networks]),
        "trainable": local_bytes(trainable),
        "optimizer": local_bytes(optim),
    }


def main(out: Path, family: str, roles: str) -> None:
    module = build(family, roles)
    trainer, record = fit(module, "ddp_find_unused_parameters_true", out / "ddp", 3)
    keep = module.checkpoint_keys()
    mine = {
        "ddp_rank_state": {k: v.clone() for k, v in module.state_dict().items() if k in keep},
        "ddp_bytes": byte_counts(module, trainer),
        "seen": record.seen,
    }
    results = {"ddp_run": {"state": trainable_state(module), "norms": record.norms}}

    module = build(family, roles)
    trainer, record = fit(module, ShardedStrategy(), out / "fsdp2", 3, save_at=2)
    mine["fsdp2_bytes"] = byte_counts(module, trainer)
    results["fsdp2"] = {"state": trainable_state(module), "norms": record.norms}
    step2 = out / "fsdp2" / "ckpt" / "epoch=0-step=2.ckpt"

    module = build(family, roles)
    trainer, record = fit(module, ShardedStrategy(), out / "resumed", 3, ckpt_path=str(step2))
    results["resumed"] = {
        "state": trainable_state(module),
        "norms": record.norms,
        "generator_steps": int(module.generator_steps),
    }
    rank = dist.get_rank()
    torch.save({**mine, **(results if rank == 0 else {})}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    for case in sys.argv[2:]:
        family, roles = case.split(":")
        main(Path(sys.argv[1]) / f"{family}-{roles}", family, roles)
