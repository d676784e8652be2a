"""Activation bytes of one pass of a whole network: a Wan transformer or an AnimateDiff / SD UNet.

A pass is described by :class:`Pass`: the batch's clips, how many of the network's stages run (a
discriminator's encoder stops after its deepest feature layer), whether the weights train, and the
execution settings. Stages follow diffusers' modules (``blocks`` of ``WanTransformer3DModel``;
``down_blocks`` / ``mid_block`` / ``up_blocks`` of ``UNetMotionModel`` / ``UNet2DConditionModel``), each
costed by :mod:`avdm.training.memory.blocks`.

Gradient checkpointing (``module.gradient_checkpointing``) follows what diffusers checkpoints: every Wan
block; in a UNet the ResNets (and the mid block's motion modules), while spatial transformers and the down /
up blocks' motion modules keep their activations. A checkpointed unit keeps its input; its recomputation in
backward adds one unit's full activations at the peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avdm.training.memory import blocks


@dataclass(frozen=True)
class Pass:
    """One forward pass that keeps a graph.

    Attributes:
        batch: clips (or, for a 2D view, images) in the pass.
        frames, height, width: latent frames per clip (1 for images) and latent size.
        text: text tokens per clip.
        e: bytes of an activation element.
        trainable: the network's weights take gradients (else frozen, the gradient flows to the input).
        checkpointing, attention: execution settings; ``lora_rank``: adapters on a frozen base (0: none).
        stages: stages that run (``None``: all); a UNet counts down blocks then the mid block, then up blocks.
    """

    batch: int
    frames: int
    height: int
    width: int
    text: int
    e: int
    trainable: bool
    checkpointing: bool = False
    attention: str = "flash"
    lora_rank: int = 0
    stages: int | None = None  # transformer blocks that run (None: all)


def _total(units: list[tuple[int, int | None]], checkpointing: bool) -> int:
    """``units``: (full bytes, kept input bytes when checkpointed, or None for a unit never checkpointed)."""
    if not checkpointing:
        return sum(full for full, _ in units)
    kept = sum(full if kept is None else kept for full, kept in units)
    recompute = max((full for full, kept in units if kept is not None), default=0)
    return kept + recompute


def wan_pass(config: Any, p: Pass) -> int:
    """A ``WanTransformer3DModel`` pass: ``num_layers`` blocks (or ``p.stages``) over the patch tokens."""
    pt, ph, pw = config.patch_size
    dim = config.num_attention_heads * config.attention_head_dim
    seq = (p.frames // pt) * (p.height // ph) * (p.width // pw)
    n, text = p.batch * seq, p.batch * p.text
    heads, layers = config.num_attention_heads, config.num_layers if p.stages is None else p.stages
    trainable = p.trainable and not p.lora_rank
    block = blocks.wan_block(n, dim, heads, config.ffn_dim, text, seq, p.e, trainable, p.attention)
    if p.lora_rank:
        block += blocks.lora_extra(n, dim, p.lora_rank, p.e, attentions=2)
    units: list[tuple[int, int | None]] = [(block, n * dim * p.e) for _ in range(layers)]
    # Embeddings and head: the text projection (text_dim -> dim, GELU), the patch embedding, the output norm.
    head = text * (config.text_dim + 2 * dim) * p.e + n * dim * (blocks.FP32 + 2 * p.e)
    return _total(units, p.checkpointing) + head


Units = list[tuple[int, int | None]]


def unet_stages(config: Any, p: Pass) -> list[tuple[str, Units]]:
    """The units of a UNet pass by stage, in order: ``conv_in``, ``down_blocks.i``, ``mid_block``,
    ``up_blocks.i``, ``head``; each unit is (full bytes, bytes kept when checkpointed or ``None``)."""
    channels = list(config.block_out_channels)
    heads_of = config.get("num_attention_heads") or config.get("attention_head_dim")
    heads = list(heads_of) if isinstance(heads_of, (list, tuple)) else [heads_of] * len(channels)
    motion = "motion_max_seq_length" in config or "use_motion_mid_block" in config
    motion_heads = config.get("motion_num_attention_heads", 8)
    e, images = p.e, p.batch * p.frames
    trainable = p.trainable and not p.lora_rank

    def tokens(level: int) -> int:
        return images * (p.height >> level) * (p.width >> level)

    def layer(level: int, c_in: int, c: int, cross: bool) -> Units:
        """A ResNet (checkpointed), a spatial transformer, a motion module (neither checkpointed)."""
        n = tokens(level)
        mh = motion_heads[level] if isinstance(motion_heads, (list, tuple)) else motion_heads
        found: Units = [(blocks.resnet(n, c_in, c, e), n * c_in * e)]
        if cross:
            found += _spatial(n, c, heads[level], images, p)
        if motion:
            found.append((blocks.motion_module(n, c, mh, p.frames, e, trainable, p.attention), None))
        return found

    stages: list[tuple[str, Units]] = [("conv_in", [(tokens(0) * config.in_channels * e, None)])]
    c_in, last = channels[0], len(channels) - 1
    for level, (kind, c) in enumerate(zip(config.down_block_types, channels)):
        units: Units = []
        for j in range(config.layers_per_block):
            units += layer(level, c_in if j == 0 else c, c, kind.startswith("CrossAttn"))
        c_in = c
        if level < last:
            units.append((blocks.downsample(tokens(level), c, e), None))
        stages.append((f"down_blocks.{level}", units))
    # The mid block: resnets[0] is not checkpointed; then a spatial transformer, a motion module (checkpointed
    # with use_motion_mid_block) and a checkpointed ResNet.
    n, c = tokens(last), channels[-1]
    mid: Units = [(blocks.resnet(n, c, c, e), None)]
    mid += _spatial(n, c, heads[last], images, p)
    if motion:
        mh = motion_heads[last] if isinstance(motion_heads, (list, tuple)) else motion_heads
        full = blocks.motion_module(n, c, mh, p.frames, e, trainable, p.attention)
        mid.append((full, n * c * e if config.get("use_motion_mid_block", True) else None))
    mid.append((blocks.resnet(n, c, c, e), n * c * e))
    stages.append(("mid_block", mid))
    reversed_channels, out_c = list(reversed(channels)), channels[-1]
    for i, kind in enumerate(config.up_block_types):
        prev_c, out_c = out_c, reversed_channels[i]
        in_c, level, units = reversed_channels[min(i + 1, last)], last - i, []
        for j in range(config.layers_per_block + 1):
            skip = in_c if j == config.layers_per_block else out_c
            units += layer(level, (prev_c if j == 0 else out_c) + skip, out_c, kind.startswith("CrossAttn"))
        if i < last:
            units.append((blocks.upsample(tokens(level), out_c, e), None))
        stages.append((f"up_blocks.{i}", units))
    stages.append(("head", [(3 * tokens(0) * channels[0] * e, None)]))  # GroupNorm, SiLU, conv_out
    return stages


def _spatial(n: int, c: int, heads: int, images: int, p: Pass) -> Units:
    """A spatial transformer as diffusers checkpoints it: its norm and projections (never), and its
    ``BasicTransformerBlock`` (checkpointed: keeps its input and the text it attends to)."""
    trainable = p.trainable and not p.lora_rank
    full = blocks.spatial_transformer(n, c, heads, images, p.text, p.e, trainable, p.attention)
    outer = blocks.SPATIAL_OUTER * n * c * p.e
    return [(outer, None), (full - outer + _lora(n, c, p, 2), n * c * p.e)]


def _lora(n: int, c: int, p: Pass, attentions: int) -> int:
    return blocks.lora_extra(n, c, p.lora_rank, p.e, attentions) if p.lora_rank else 0


def stage_bytes(units: Units, checkpointing: bool) -> int:
    """Activation bytes of a stage's units (see :func:`_total`)."""
    return _total(units, checkpointing)


def unet_pass(config: Any, p: Pass, last_stage: str | None = None) -> int:
    """A UNet pass: conv in, down blocks, the mid block, up blocks, the output head; up to and including
    ``last_stage`` when the pass stops early (a discriminator's encoder)."""
    units: Units = []
    for name, stage in unet_stages(config, p):
        units += stage
        if name == last_stage:
            break
    return _total(units, p.checkpointing)


def is_transformer(config: Any) -> bool:
    """Whether ``config`` is a Wan-style transformer's (else a UNet's)."""
    return "patch_size" in config and "ffn_dim" in config


def network_pass(config: Any, p: Pass, last_stage: str | None = None) -> int:
    """Activation bytes of pass ``p`` of the network whose diffusers ``config`` is given, up to and including
    ``last_stage`` (``blocks.i``, ``down_blocks.i``, ``mid_block``; ``None``: the whole network)."""
    if is_transformer(config):
        if last_stage is not None and last_stage.startswith("blocks."):
            p = Pass(**{**p.__dict__, "stages": int(last_stage.split(".")[1]) + 1})
        return wan_pass(config, p)
    return unet_pass(config, p, last_stage)
