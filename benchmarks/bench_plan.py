"""The memory plan's activation model against measurement: autograd's saved bytes per block at real width.

Every tensor a ``saved_tensors_hooks`` pack hook sees while the block runs forward is counted once per
storage (keyed by the storage object: meta data pointers are all 0), weights left out. The blocks run on the
**meta device** (shapes and dtypes, no memory), so one Wan2.1-14B block at 32k tokens is measured on a CPU;
``scaled_dot_product_attention`` runs the fused flash kernel there
(:func:`~avdm.training.memory.saved_tensors.flash_attention_on_meta`), as it does on a GPU in bf16.

* Wan2.1 1.3B and 14B: one ``WanTransformerBlock`` (trainable, bf16) at 8190, 17160 and 32760 tokens
  (Wan's 480p latents of 41 and 81 frames, and a quarter of 81 frames' area), 512 text tokens;
* SD1.5 + AnimateDiff motion modules: ``down_blocks.1``, ``mid_block`` and ``up_blocks.2`` of the
  ``UNetMotionModel``, measured in place during one forward of the whole UNet (bf16, trainable), 16 frames
  at latent 32, 48 and 64 (256 to 512 pixels).

With checkpointing the network's checkpoint function is replaced by one that checkpoints as diffusers does
(non-reentrant) and also records the unit's inputs (kept) and, run again aside, the unit's full saved bytes
(what its recomputation holds in backward): measured = saved bytes outside the checkpointed units + their
inputs + the largest unit's recomputation. Planned: :mod:`avdm.training.memory.blocks` /
:mod:`avdm.training.memory.networks`. Results in ``results/plan.md`` and ``results/plan.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

META = torch.device("meta")
DTYPE = torch.bfloat16
WAN = {"Wan2.1 1.3B": (12, 8960), "Wan2.1 14B": (40, 13824)}  # heads (x 128), FFN width
WAN_TOKENS = (8190, 17160, 32760)
UNET_LATENTS = (32, 48, 64)
UNET_STAGES = ("down_blocks.1", "mid_block", "up_blocks.2")
TOLERANCE = 0.15


class StageCounter:
    """Saved bytes of one stage (a storage once), plus, under checkpointing, the checkpointed units'
    inputs and the largest unit's recomputation."""

    def __init__(self, weights: set[int]) -> None:
        self.seen = set(weights)
        self.weights = weights
        self.bytes = 0
        self.recompute = 0

    def add(self, tensor: Tensor) -> None:
        key = tensor.untyped_storage()._cdata
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += tensor.untyped_storage().nbytes()

    @contextmanager
    def counting(self) -> Iterator[None]:
        def pack(tensor: Tensor) -> Tensor:
            self.add(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield

    def checkpoint(self, module: nn.Module, *args: Any) -> Any:
        """diffusers' checkpoint call, measured: inputs kept, the recomputation's saved bytes aside."""
        for arg in args:
            if isinstance(arg, Tensor):
                self.add(arg)
        aside = StageCounter(self.weights)
        with aside.counting():
            module(*args)
        self.recompute = max(self.recompute, aside.bytes)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    @property
    def total(self) -> int:
        return self.bytes + self.recompute


def _weights(model: nn.Module) -> set[int]:
    return {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}


def measure_wan_block(
    heads: int, ffn: int, tokens: int, checkpointing: bool, text: int = 512, head_dim: int = 128,
    device: torch.device = META, dtype: torch.dtype = DTYPE, trainable: bool = True,
) -> int:  # fmt: skip
    """Saved bytes of one ``WanTransformerBlock`` (bf16, trainable: the benchmark's case) on ``device``."""
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    from avdm.training.memory.saved_tensors import flash_attention_on_meta

    dim = heads * head_dim
    with device:
        block = WanTransformerBlock(dim, ffn, heads, qk_norm="rms_norm_across_heads", cross_attn_norm=True)
        block = block.to(dtype).requires_grad_(trainable)
        x = torch.randn(1, tokens, dim, dtype=dtype, requires_grad=True)
        args = (x, torch.randn(1, text, dim, dtype=dtype), torch.randn(1, 6, dim, dtype=dtype),
                (torch.randn(1, tokens, 1, head_dim), torch.randn(1, tokens, 1, head_dim)))  # fmt: skip
    counter = StageCounter(_weights(block))
    with flash_attention_on_meta(), counter.counting():
        if checkpointing:
            counter.checkpoint(block, *args)
        else:
            block(*args)
    return counter.total


def plan_wan_block(heads: int, ffn: int, tokens: int, checkpointing: bool, text: int = 512) -> int:
    from avdm.training.memory import blocks

    dim = heads * 128
    full = blocks.wan_block(tokens, dim, heads, ffn, text, tokens, 2, True, "flash")
    return full + (tokens * dim * 2 if checkpointing else 0)


def measure_unet_stages(
    latent: int,
    frames: int,
    checkpointing: bool,
    build: Callable[[], nn.Module],
    text: tuple[int, int] = (77, 768),
    device: torch.device = META,
) -> dict[str, int]:
    """Saved bytes of :data:`UNET_STAGES` measured in one forward of the bf16 UNet ``build()`` on ``device``
    (``text``: tokens and width of the prompt embeddings)."""
    from avdm.training.memory.saved_tensors import flash_attention_on_meta

    with device:
        unet = build().to(DTYPE).requires_grad_(True)
    weights, counters = _weights(unet), {}
    current: list[StageCounter] = []
    if checkpointing:
        unet.enable_gradient_checkpointing(lambda module, *a: _checkpoint(current, module, *a))
    hooks = []
    for name in UNET_STAGES:
        counters[name] = StageCounter(weights)
        scope: dict[str, Any] = {}

        def pre(_m: nn.Module, _a: Any, counter: StageCounter = counters[name], s: dict = scope) -> None:
            current.append(counter)
            s["cm"] = counter.counting()
            s["cm"].__enter__()

        def post(_m: nn.Module, _a: Any, _o: Any, s: dict = scope) -> None:
            s["cm"].__exit__(None, None, None)
            current.pop()

        stage = unet.get_submodule(name)
        hooks += [stage.register_forward_pre_hook(pre), stage.register_forward_hook(post)]
    with device:
        x = torch.randn(1, unet.config.in_channels, frames, latent, latent, dtype=DTYPE, requires_grad=True)
        embeddings = torch.randn(frames, *text, dtype=DTYPE)
        with flash_attention_on_meta():
            unet(x, torch.tensor([10]), encoder_hidden_states=embeddings)
    for hook in hooks:
        hook.remove()
    return {name: c.total for name, c in counters.items()}


def _checkpoint(current: list[StageCounter], module: nn.Module, *args: Any) -> Any:
    if current:  # inside a measured stage
        return current[-1].checkpoint(module, *args)
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)


def plan_unet_stages(
    config: Any, latent: int, frames: int, checkpointing: bool, text: int = 77
) -> dict[str, int]:
    from avdm.training.memory import networks

    p = networks.Pass(batch=1, frames=frames, height=latent, width=latent, text=text, e=2, trainable=True)
    stages = dict(networks.unet_stages(config, p))
    return {name: networks.stage_bytes(stages[name], checkpointing) for name in UNET_STAGES}


def sd15_motion_unet() -> nn.Module:
    from diffusers import UNetMotionModel

    # diffusers' defaults are SD1.5's UNet with the v1.5 motion modules (as benchmarks/bench_lora.py)
    return UNetMotionModel(cross_attention_dim=768)


def _row(name: str, measured: int, planned: int) -> dict[str, Any]:
    return {"case": name, "measured_bytes": measured, "planned_bytes": planned,
            "relative_error": planned / measured - 1}  # fmt: skip


def cases() -> list[dict[str, Any]]:
    rows = []
    for name, (heads, ffn) in WAN.items():
        for tokens in WAN_TOKENS:
            for ckpt in (False, True):
                label = f"{name} block, {tokens} tokens" + (", checkpointing" if ckpt else "")
                rows.append(_row(label, measure_wan_block(heads, ffn, tokens, ckpt),
                                 plan_wan_block(heads, ffn, tokens, ckpt)))  # fmt: skip
    with META:
        config = sd15_motion_unet().config
    for latent in UNET_LATENTS:
        for ckpt in (False, True):
            measured = measure_unet_stages(latent, 16, ckpt, sd15_motion_unet)
            planned = plan_unet_stages(config, latent, 16, ckpt)
            for stage in UNET_STAGES:
                label = (
                    f"SD1.5 + AnimateDiff {stage}, 16 x {latent}^2 latents ({16 * latent * latent} tokens)"
                )
                rows.append(
                    _row(label + (", checkpointing" if ckpt else ""), measured[stage], planned[stage])
                )
    return rows


def run(out_dir: Path) -> dict[str, Any]:
    rows = cases()
    worst = max(abs(r["relative_error"]) for r in rows)
    result = {"dtype": "bfloat16", "attention": "flash", "tolerance": TOLERANCE,
              "worst_relative_error": worst, "cases": rows}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Memory plan: activation model vs measured saved tensors",
        "",
        "Autograd's saved bytes of one block / stage at real width (bf16, trainable, flash attention),",
        "measured on the meta device with a `saved_tensors_hooks` pack hook (one count per storage, weights",
        "left out) by `benchmarks/bench_plan.py`; planned by `avdm/training/memory` (blocks, networks).",
        f"Worst relative error: {100 * worst:.1f} % (tolerance {100 * TOLERANCE:.0f} %).",
        "",
        "| case | measured GB | planned GB | error |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['measured_bytes'] / 1e9:.3f} | {r['planned_bytes'] / 1e9:.3f} | "
                     f"{100 * r['relative_error']:+.1f} % |")  # fmt: skip
    (out_dir / "plan.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(__file__).parent / "results"), indent=2))
