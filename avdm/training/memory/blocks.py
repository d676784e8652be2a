"""What autograd keeps for backward, per block, as a function of tokens, width, heads and dtype (bytes).

Counted from the tensors each diffusers block saves (``saved_tensors_hooks``, one count per storage, weights
left out; ``benchmarks/bench_plan.py`` checks these formulas against that measurement at real widths):

* ``n`` is the token count of the whole batch (``B x tokens``); ``e`` the bytes of an activation element
  (2 for bf16 / fp16, 4 for float32); float32 tensors a block keeps whatever its dtype (Wan's
  ``FP32LayerNorm`` and ``.float()`` residual stream, norm statistics, the attention log-sum-exp) count 4.
* ``trainable``: the block's weights take gradients (the generator, a full-copy fake score): every linear
  keeps its input. Frozen (a teacher the gradient passes through, a LoRA base): linears keep nothing, since
  the input's gradient needs only the weight.
* attention ``flash`` (flash / memory-efficient kernels): ``q, k, v``, the output and a log-sum-exp per
  query and head; ``math``: also the ``B x heads x N_q x N_k`` softmax matrix, in place of the log-sum-exp
  (checked in float32; PyTorch's CPU math path upcasts half inputs, which this does not model).
"""

from __future__ import annotations

ATTENTION = ("flash", "math")
FP32 = 4


def attention_matrix(n_q: int, keys: int, heads: int, e: int, attention: str) -> int:
    """What the math backend keeps beyond a fused kernel: the softmax ``(B, heads, N_q, N_k)`` in place of
    the log-sum-exp ``(B, heads, N_q)``; ``n_q`` is ``B x N_q``, ``keys`` the keys per query sequence."""
    if attention == "flash":
        return 0
    return heads * n_q * keys * e - heads * n_q * FP32


def wan_block(
    n: int, dim: int, heads: int, ffn: int, text: int, seq: int, e: int, trainable: bool, attention: str
) -> int:
    """One ``WanTransformerBlock`` (self-attention with rotary, cross-attention, GELU FFN; AdaLN scale and
    shift) on ``n = B x N`` tokens of width ``dim``; ``text`` text tokens of the batch (``B x L``), ``seq``
    the tokens of one sequence (``N``: the attention's keys, the rotary table's rows)."""
    head_dim = dim // heads
    if trainable:  # 12 float32 and 10 activation-dtype (n, dim) tensors, both FFN activations
        own = n * dim * (12 * FP32 + 10 * e) + 2 * n * ffn * e + text * dim * (2 * FP32 + 3 * e)
    else:  # frozen: the norms' inputs and the attention's q, k, v, output; the GELU's input
        own = n * dim * (6 * FP32 + 6 * e) + n * ffn * e + 2 * text * dim * e
    rotary = 2 * seq * head_dim * FP32  # cos, sin (float32, shared by every block of a network)
    stats = 2 * heads * n * FP32 + 9 * n * FP32  # two log-sum-exps, norm statistics
    matrices = attention_matrix(n, seq, heads, e, attention) + attention_matrix(
        n, text // max(n // seq, 1), heads, e, attention
    )
    return own + rotary + stats + matrices


def resnet(n: int, c_in: int, c_out: int, e: int) -> int:
    """A ``ResnetBlock2D`` (GroupNorm, SiLU, conv, twice): each conv / norm / SiLU input, trainable or not
    (a convolution keeps its input for either gradient)."""
    return 3 * n * c_in * e + 3 * n * c_out * e


# (n, c) tensors of a spatial transformer outside its transformer block: the GroupNorm's input, the input
# projection's input, the output projection's input.
SPATIAL_OUTER = 3


def spatial_transformer(
    n: int, channels: int, heads: int, images: int, text: int, e: int, trainable: bool, attention: str
) -> int:
    """A ``Transformer2DModel`` (GroupNorm, conv in, self-attention, cross-attention, GEGLU FFN, conv out)
    over ``images`` images of ``n / images`` pixels each; ``text`` tokens per image."""
    per_token = 31 if trainable else 24  # (n, c) units: norms, projections, GEGLU's 8c and 4c halves
    own = per_token * n * channels * e + 2 * images * text * channels * e  # + cross-attention k, v
    stats = 2 * heads * n * FP32 + 6 * n * FP32
    pixels = n // max(images, 1)
    matrices = attention_matrix(n, pixels, heads, e, attention) + attention_matrix(
        n, text, heads, e, attention
    )
    return own + stats + matrices


def motion_module(
    n: int, channels: int, heads: int, frames: int, e: int, trainable: bool, attention: str
) -> int:
    """AnimateDiff's ``AnimateDiffTransformer3D``: two temporal self-attentions over ``frames`` per pixel
    and a GEGLU FFN."""
    per_token = 33 if trainable else 24
    stats = 2 * heads * n * FP32 + 6 * n * FP32
    return per_token * n * channels * e + stats + 2 * attention_matrix(n, frames, heads, e, attention)


def downsample(n: int, channels: int, e: int) -> int:
    """A strided ``Downsample2D`` conv on ``n`` tokens at its input resolution: its input."""
    return n * channels * e


def upsample(n: int, channels: int, e: int) -> int:
    """``Upsample2D``: nearest x2, then a conv that keeps its (four times larger) input."""
    return 4 * n * channels * e


def lora_extra(n: int, channels: int, rank: int, e: int, attentions: int) -> int:
    """What LoRA adapters on ``to_q, to_k, to_v, to_out.0`` add to a frozen block (not measured): per
    attention, the adapted inputs (the query input and the output projection's) and four rank-``r``
    intermediates."""
    return attentions * (2 * n * channels * e + 4 * n * rank * e)
