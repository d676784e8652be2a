"""Measuring what autograd keeps for the backward pass on the meta device: the attention kernel it runs.

:func:`flash_attention_on_meta`: on the meta device ``scaled_dot_product_attention`` always takes the math
path (it keeps the ``B x heads x N x N`` attention matrix); inside this context it calls the fused CPU
flash kernel instead, which keeps what every fused backend keeps (``q, k, v``, the output, a log-sum-exp
per query), the memory behaviour of flash / memory-efficient attention on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


def _flash(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> Tensor:  # fmt: skip
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
    )
    return out[0]


@contextmanager
def flash_attention_on_meta() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` runs the fused flash kernel (see the module docstring)."""
    original: Any = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _flash
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
