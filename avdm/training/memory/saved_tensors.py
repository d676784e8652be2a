"""Measure what autograd keeps for the backward pass: bytes of saved tensors, on real or meta tensors.

:func:`count_saved` counts every tensor a ``saved_tensors_hooks`` pack hook sees while a block runs, each
storage once (keyed by the storage object itself, which works on the meta device where every data pointer
is 0) and without the weights of the given modules (they exist anyway). Meta tensors carry shapes and dtypes
only, so a block at real width (one Wan2.1-14B block at 32k tokens) is measured in seconds on a CPU.

:func:`flash_attention_on_meta`: on the meta device ``scaled_dot_product_attention`` always takes the math
path (it keeps the ``B x heads x N x N`` attention matrix); inside this context it calls the fused CPU
flash kernel instead, which keeps what every fused backend keeps (``q, k, v``, the output, a log-sum-exp
per query), the memory behaviour of flash / memory-efficient attention on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def _storage_key(tensor: Tensor) -> int:
    return tensor.untyped_storage()._cdata


@contextmanager
def count_saved(weights: Iterable[nn.Module] = ()) -> Iterator[dict[str, int]]:
    """Yields ``{"bytes": n}``, filled in as autograd saves tensors inside the block; parameters and buffers
    of ``weights`` are not counted (nor are their views: a transposed weight shares its storage)."""
    counter = {"bytes": 0}
    seen = {_storage_key(t) for m in weights for t in (*m.parameters(), *m.buffers())}

    def pack(tensor: Tensor) -> Tensor:
        key = _storage_key(tensor)
        if key not in seen:
            seen.add(key)
            counter["bytes"] += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield counter


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
