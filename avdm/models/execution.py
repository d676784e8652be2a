"""How the networks run, not what they compute: switches that trade memory or layout for speed.

Each switch leaves every loss value unchanged (``tests/test_execution_switches.py`` checks this on a full
AVDM2 iteration) and is set from the config (``module.gradient_checkpointing``, ``module.channels_last``):

* gradient checkpointing (diffusers' own, per ResNet / transformer block): activations inside each block
  are recomputed in the backward pass instead of kept; costs about one extra forward of the checkpointed
  networks, saves most activation memory. Applies to every diffusers network that runs with a graph: the
  generator, the fake scores, and the frozen teacher when the GAN's generator phase backpropagates
  through it.
* channels-last: 4-D weights (the convolutions of the per-frame UNet layers) in NHWC layout, which
  cuDNN / oneDNN kernels prefer; outputs follow the weights' layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from avdm.models.lora import forward_adapter_state


def diffusers_models(root: nn.Module) -> list[nn.Module]:
    """The outermost diffusers ``ModelMixin`` networks inside ``root`` (each once, even when shared)."""
    from diffusers.models.modeling_utils import ModelMixin

    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(module: nn.Module) -> None:
        if isinstance(module, ModelMixin):
            if id(module) not in seen:
                seen.add(id(module))
                found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(root)
    return found


def enable_gradient_checkpointing(root: nn.Module) -> list[str]:
    """Turn on diffusers gradient checkpointing in every network of ``root`` that supports it.

    Returns the class names of the networks switched (those that cannot are left as they are: a VAE or
    text encoder used only without a graph gains nothing from it).
    """
    switched = []
    for model in diffusers_models(root):
        if getattr(model, "_supports_gradient_checkpointing", False):
            model.enable_gradient_checkpointing(checkpoint_under_forward_adapters)
            switched.append(type(model).__name__)
    return switched


def checkpoint_under_forward_adapters(block: nn.Module, *args: Any) -> Any:
    """diffusers' default checkpoint call (``torch.utils.checkpoint``, non-reentrant), with the block's
    recomputation in the backward pass run under the LoRA adapter its forward ran under (LoRA roles share
    one network, and the backward runs after the role's call has switched its adapter off)."""
    return torch.utils.checkpoint.checkpoint(
        block.__call__,
        *args,
        use_reentrant=False,
        context_fn=lambda: (nullcontext(), forward_adapter_state(block)),
    )


def to_channels_last(root: nn.Module) -> int:
    """Every 4-D parameter of ``root`` (2-D convolution weights) in channels-last (NHWC) layout, in place;
    returns how many were converted. 5-D weights (3-D convolutions) are left as they are."""
    converted = 0
    for param in root.parameters():
        if param.dim() == 4 and not param.is_contiguous(memory_format=torch.channels_last):
            param.data = param.data.contiguous(memory_format=torch.channels_last)
            converted += 1
    return converted


@contextmanager
def count_saved_activations(weights: nn.Module | None = None) -> Iterator[dict[str, int]]:
    """Bytes of the tensors autograd keeps for the backward pass while the block runs.

    Yields a dict whose ``"bytes"`` is filled in as tensors are saved; each storage counts once, and the
    parameters and buffers of ``weights`` (which exist anyway) are not counted. Used to measure
    activation memory, which on CPU the allocator does not report.
    """
    counter = {"bytes": 0}
    seen: set[int] = set()
    if weights is not None:
        seen.update(t.untyped_storage().data_ptr() for t in (*weights.parameters(), *weights.buffers()))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            counter["bytes"] += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield counter
