"""Bytes per process under DDP and FSDP2 (``trainer=fsdp2``): parameters, gradients, AdamW state.

* measured: two CPU processes (gloo, ``torchrun``) train the main job's setup (``+experiment=avdm2_shapes``:
  the shipped shapes teacher, 2D SDM + denoising GAN, full-copy generator and fake score) for one generator
  step (two iterations, the config's batch of 4), once with DDP and once with FSDP2. Each process counts
  what it holds: its parameters (a ``DTensor``: the local shard; shared storages once), the largest set of
  gradients alive at once (right after each backward; roles update one at a time) and its AdamW moments;
* computed: the same roles for the real shapes of SD1.5 + AnimateDiff v1.5, Wan2.1-1.3B and Wan2.1-14B at
  8 GPUs (the denoisers built on the meta device): a bf16 frozen teacher, float32 generator and fake score
  with AdamW, one role's float32 gradients at a time. FSDP2 divides all of it by 8 and adds its working set:
  two gathered bf16 units (the one computing and the one prefetched) and one unit's float32 gradient, the
  largest unit of :func:`~avdm.training.sharding.shard_units`. Activations, text encoder and VAE excluded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GPUS = 8
MB = 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(out: Path) -> None:
    """One rank of the measured part (run under ``torchrun --nproc-per-node 2``)."""
    import lightning as L
    import torch
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir

    from avdm.config import CONFIG_DIR
    from avdm.training.build import build_module
    from avdm.training.sharded_strategy import ShardedStrategy
    from avdm.training.sharding import local_bytes, reshard_all

    class Count(L.Callback):
        def __init__(self) -> None:
            self.gradients = 0

        def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
            backward = pl_module.manual_backward

            def counted(loss: Any, *args: Any, **kwargs: Any) -> None:
                backward(loss, *args, **kwargs)
                grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
                self.gradients = max(self.gradients, local_bytes(grads))

            pl_module.manual_backward = counted

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=avdm2_shapes", "paths.output_dir=/tmp/bench_sharding"])
    from hydra.utils import instantiate

    result = {}
    for name, strategy in (("DDP", "ddp_find_unused_parameters_true"), ("FSDP2", ShardedStrategy())):
        torch.manual_seed(0)
        module = build_module(cfg)
        count = Count()
        trainer = L.Trainer(
            max_steps=1, accelerator="cpu", devices=2, strategy=strategy, logger=False, callbacks=[count],
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.fit(module, datamodule=instantiate(cfg.data))
        reshard_all(module)  # roots keep their own weights gathered after a forward: count storage
        moments = [
            t for opt in trainer.optimizers for s in opt.state.values() for t in s.values() if t.ndim > 0
        ]
        result[name] = {
            "parameters_mb": local_bytes(list(module.parameters())) / MB,
            "trainable_mb": local_bytes([p for p in module.parameters() if p.requires_grad]) / MB,
            "gradients_peak_mb": count.gradients / MB,
            "adamw_state_mb": local_bytes(moments) / MB,
        }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))


def measured(tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
        str(_free_port()), "-m", "benchmarks.bench_sharding", "--worker", str(tmp),
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, cwd=Path(__file__).parent.parent)
    return {f"rank {r}": json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)}


def computed(build: Any) -> dict[str, float]:
    from accelerate import init_empty_weights

    from avdm.training.sharding import shard_units

    with init_empty_weights():
        model = build()
    n = sum(p.numel() for p in model.parameters())
    unit = max(sum(p.numel() for p in u.parameters()) for u in shard_units(model))
    # teacher bf16 + generator and fake score float32 + their AdamW moments + one role's float32 gradients
    ddp = 2 * n + 2 * 4 * n + 2 * 8 * n + 4 * n
    working = 2 * 2 * unit + 4 * unit
    return {
        "parameters_b": n / 1e9,
        "largest_unit_m": unit / 1e6,
        "ddp_gb": ddp / 1e9,
        "fsdp2_gb": (ddp / GPUS + working) / 1e9,
    }


def run(out_dir: Path) -> dict[str, Any]:
    from benchmarks.bench_lora import REAL

    result = {
        "measured_avdm2_shapes_2_processes": measured(Path("/tmp/bench_sharding")),
        f"computed_{GPUS}_gpus": {name: computed(build) for name, build in REAL.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sharding.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Sharded training: bytes per process, DDP vs FSDP2 (`trainer=fsdp2`)",
        "",
        "Measured: two CPU processes (gloo) train `+experiment=avdm2_shapes` (the shipped shapes teacher,",
        "float32; full-copy generator and fake score, denoising-GAN head) for one generator step:",
        "",
        "| strategy | rank | parameters MB | of them trainable MB | gradients, peak MB | AdamW state MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for rank, by_strategy in result["measured_avdm2_shapes_2_processes"].items():
        for name, r in by_strategy.items():
            lines.append(
                f"| {name} | {rank} | {r['parameters_mb']:.1f} | {r['trainable_mb']:.1f} | "
                f"{r['gradients_peak_mb']:.1f} | {r['adamw_state_mb']:.1f} |"
            )
    lines += [
        "",
        "FSDP2 keeps the VAE and the discriminator head replicated (small); every network a role runs",
        "is split in half. Gradients: the largest set alive at once (the roles update one at a time).",
        "",
        f"Computed per GPU at {GPUS} GPUs for real shapes (full-copy generator and fake score: bf16 frozen",
        "teacher, float32 trainable copies, AdamW moments and one role's gradients; FSDP2 adds two gathered",
        "bf16 units and one unit's float32 gradient; activations, text encoder and VAE not included):",
        "",
        "| denoiser | parameters | largest shard unit | DDP GB per GPU | FSDP2 GB per GPU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in result[f"computed_{GPUS}_gpus"].items():
        lines.append(
            f"| {name} | {r['parameters_b']:.2f} B | {r['largest_unit_m']:.0f} M | {r['ddp_gb']:.1f} | "
            f"{r['fsdp2_gb']:.1f} |"
        )
    (out_dir / "sharding.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(Path(sys.argv[2]))
    else:
        print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
