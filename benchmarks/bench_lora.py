"""What LoRA roles save: bytes of frozen weights, trainable weights, gradients and AdamW state.

Three setups of the AVDM2 run (2D SDM + denoising GAN): full trainable copies of the teacher for the
generator and the fake score (the paper's setting), a LoRA generator (``module.generator_lora``), and a LoRA
generator plus a LoRA fake score (``loss.sdm.fake_score_lora``), all on one frozen base; and the last with
activation checkpointing (``module.gradient_checkpointing``: each block recomputed under its adapter).

* measured on the shipped shapes teacher (``avdm2_shapes``): the module built from the config, bytes of its
  distinct storages (shared weights once), gradients = the trainable bytes in float32, AdamW = two float32
  moments per trainable parameter; and two training iterations (generator + critic phases, the config's
  batch of 4) run by Lightning, where every tensor autograd saves for backward is counted while it lives
  (``torch.autograd.graph.saved_tensors_hooks``; weights saved by a layer are weights, not counted): the
  peak of live saved activations. Gradients live one role at a time (each optimizer's ``zero_grad`` after
  its step frees them), so the peak is frozen + trainable + AdamW + the largest role's gradients + that
  activation peak;
* computed for the real shapes of SD1.5 + the AnimateDiff v1.5 motion adapter, Wan2.1-1.3B and Wan2.1-14B:
  the denoisers built on the meta device (no weights), the adapters injected by the same code, GB per GPU
  at bf16 frozen weights and float32 trainable weights + AdamW state (activations not included), at rank
  16 and rank 8.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from avdm.models.denoiser import parameter_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RANK = 16
RANKS = (16, 8)
SETUPS = {
    "full copies": [],
    "LoRA generator": [f"module.generator_lora={{rank:{RANK},alpha:{RANK}}}"],
    "LoRA generator + LoRA fake score": [
        f"module.generator_lora={{rank:{RANK},alpha:{RANK}}}",
        f"loss.sdm.fake_score_lora={{rank:{RANK},alpha:{RANK}}}",
    ],
    "LoRA generator + LoRA fake score, checkpointed": [
        f"module.generator_lora={{rank:{RANK},alpha:{RANK}}}",
        f"loss.sdm.fake_score_lora={{rank:{RANK},alpha:{RANK}}}",
        "module.gradient_checkpointing=true",
    ],
}


def measure(overrides: list[str]) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from avdm.config import CONFIG_DIR
    from avdm.training.build import build_module

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=avdm2_shapes", "paths.output_dir=/tmp/b", *overrides])
    module = build_module(cfg)
    frozen = [p for p in module.parameters() if not p.requires_grad]
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizers, _ = module.configure_optimizers()  # one per role: the generator, each critic plugin
    largest_role = max(
        parameter_bytes([p for group in opt.param_groups for p in group["params"]], 4) for opt in optimizers
    )
    mb = 2**20
    row = {
        "frozen_mb": parameter_bytes(frozen) / mb,
        "trainable_mb": parameter_bytes(trainable) / mb,
        "gradients_mb": parameter_bytes(trainable, 4) / mb,
        "adamw_state_mb": 2 * parameter_bytes(trainable, 4) / mb,
        "activations_peak_mb": saved_activation_peak(module, int(cfg.data.batch_size)) / mb,
    }
    row["peak_mb"] = (
        row["frozen_mb"] + row["trainable_mb"] + row["adamw_state_mb"] + largest_role / mb
    ) + row["activations_peak_mb"]
    return row


class SavedActivations(L.Callback):
    """Counts the bytes of tensors autograd saves for backward while they live, during training batches."""

    def __init__(self) -> None:
        self.live: dict[int, list[int]] = {}  # storage pointer -> [references, bytes]
        self.current = self.peak = 0
        self.weights: set[int] = set()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = {p.untyped_storage().data_ptr() for p in pl_module.parameters()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda held: held.tensor)
        self._hooks.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._hooks.__exit__(None, None, None)

    def _pack(self, tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.weights or tensor.device.type == "meta":
            return _Held(tensor, None)
        entry = self.live.setdefault(ptr, [0, storage.nbytes()])
        if entry[0] == 0:
            self.current += entry[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        return _Held(tensor, lambda: self._release(ptr))

    def _release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[ptr]


class _Held:
    """What autograd keeps for a saved tensor; its release (the graph freed) lowers the live count."""

    def __init__(self, tensor: torch.Tensor, release: Any) -> None:
        self.tensor, self.release = tensor, release

    def __del__(self) -> None:
        if self.release is not None:
            self.release()


def saved_activation_peak(module: L.LightningModule, batch_size: int) -> int:
    """Peak bytes of live saved activations over two training iterations of ``module``."""
    from avdm.data.synthetic_latents import SyntheticLatentDataModule

    counter = SavedActivations()
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[counter], num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    data = SyntheticLatentDataModule(module.latent_shape, num_samples=8, batch_size=batch_size, seed=0)
    trainer.fit(module, datamodule=data)
    return counter.peak


def _sd15_motion_unet() -> nn.Module:
    from diffusers import UNetMotionModel

    # diffusers' defaults are SD1.5's UNet with the v1.5 motion modules (1.31 B parameters)
    return UNetMotionModel(cross_attention_dim=768)


def _wan(heads: int, ffn: int, layers: int) -> nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=128, ffn_dim=ffn, num_layers=layers, in_channels=16,
        out_channels=16, text_dim=4096, freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    )  # fmt: skip


REAL = {
    "SD1.5 + AnimateDiff v1.5 motion adapter": _sd15_motion_unet,
    "Wan2.1 1.3B": lambda: _wan(12, 8960, 30),
    "Wan2.1 14B": lambda: _wan(40, 13824, 40),
}


def computed(build: Any, rank: int) -> dict[str, float]:
    """GB per GPU: a bf16 frozen base; float32 trainable weights, gradients and two AdamW moments (all
    roles' gradients counted, as a training loop that keeps them between steps would hold them)."""
    from accelerate import init_empty_weights

    from avdm.models.lora import add_lora

    with init_empty_weights():
        model = build()
        base = sum(p.numel() for p in model.parameters())
        lora = sum(p.numel() for p in add_lora(model, "generator", {"rank": rank}))
    per_trainable = 4 + 4 + 8  # weight, gradient, two AdamW moments (float32)
    rows = {"base_params": base, "lora_params_per_role": lora}
    for name, trainable in (
        ("full copies", 2 * base),
        ("LoRA generator", base + lora),
        ("LoRA both", 2 * lora),
    ):
        rows[f"{name}_gb"] = (base * 2 + trainable * per_trainable) / 1e9
    rows["state_beyond_base_fraction_lora_both"] = 2 * lora * per_trainable / (base * 2)
    return rows


def run(out_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "rank": RANK,
        "measured_avdm2_shapes": {name: measure(o) for name, o in SETUPS.items()},
        "computed": {
            f"{name}, rank {rank}": computed(build, rank) for name, build in REAL.items() for rank in RANKS
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lora.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# LoRA roles: training state beyond the frozen base (measured at rank {RANK})",
        "",
        "Measured on the shipped shapes teacher (`+experiment=avdm2_shapes`, float32 teacher):",
        "",
        "| setup | frozen MB | trainable MB | gradients MB | AdamW state MB | trainable + grads + AdamW MB "
        "| saved activations, peak MB | peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["measured_avdm2_shapes"].items():
        state = r["trainable_mb"] + r["gradients_mb"] + r["adamw_state_mb"]
        lines.append(
            f"| {name} | {r['frozen_mb']:.1f} | {r['trainable_mb']:.2f} | {r['gradients_mb']:.2f} | "
            f"{r['adamw_state_mb']:.2f} | {state:.2f} | {r['activations_peak_mb']:.1f} | {r['peak_mb']:.1f} |"
        )
    lines += [
        "",
        "Saved activations: every tensor autograd keeps for backward, counted while it lives, over two",
        "iterations (generator and critic phases, batch 4). Peak = frozen + trainable + AdamW + the largest",
        "role's gradients (they live one role at a time) + the activation peak. LoRA keeps the base's",
        "activations (the frozen layers still pass gradients to the input) and adds the adapters' own;",
        "activation checkpointing keeps each block's inputs only and recomputes the rest in the backward",
        "pass.",
    ]
    lines += [
        "",
        "Computed for real denoisers (built on the meta device; bf16 frozen base, float32 trainable weights,",
        "gradients and AdamW moments; activations, text encoder and VAE not included), GB per GPU:",
        "",
        "| denoiser | parameters | LoRA parameters per role | full copies GB | LoRA generator GB "
        "| LoRA both GB | state beyond the base, LoRA both |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["computed"].items():
        lines.append(
            f"| {name} | {r['base_params'] / 1e9:.2f} B | {r['lora_params_per_role'] / 1e6:.1f} M | "
            f"{r['full copies_gb']:.1f} | {r['LoRA generator_gb']:.1f} | {r['LoRA both_gb']:.1f} | "
            f"{100 * r['state_beyond_base_fraction_lora_both']:.1f} % |"
        )
    (out_dir / "lora.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
