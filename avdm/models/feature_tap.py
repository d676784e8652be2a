"""Read intermediate activations of a network by module name, with forward hooks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn


class _StopForward(Exception):
    """Raised from the last hook to skip the rest of the forward pass (the decoder)."""


class FeatureTap:
    """Context manager that records the outputs of named submodules during a forward pass.

    Block outputs that are tuples (diffusers down blocks return ``(hidden, residuals)``) are
    recorded by their first element.

    Args:
        model: the network; ``names`` are its ``named_modules()`` keys, e.g. ``down_blocks.1``.
        names: the modules to tap.
        stop_after_last: abort the forward pass once every named module has run.

    Example::

        with FeatureTap(unet, ["down_blocks.1", "mid_block"], stop_after_last=True) as tap:
            tap.run(unet, sample, t, encoder_hidden_states=text)
        tap.features["mid_block"]
    """

    def __init__(self, model: nn.Module, names: Sequence[str], stop_after_last: bool = False) -> None:
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            blocks = [n for n in modules if n.count(".") <= 1 and n]
            raise ValueError(
                f"feature layers {unknown} are not modules of {type(model).__name__}; "
                f"top-level choices include {blocks[:40]}"
            )
        self._modules = [(n, modules[n]) for n in names]
        self._stop = stop_after_last
        self._handles: list[Any] = []
        self.features: dict[str, Tensor] = {}

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.features[name] = output[0] if isinstance(output, tuple) else output
            if self._stop and len(self.features) == len(self._modules):
                raise _StopForward

        return hook

    def __enter__(self) -> FeatureTap:
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any | None:
        """Call ``fn``; returns its output, or ``None`` when the pass was stopped early."""
        try:
            return fn(*args, **kwargs)
        except _StopForward:
            return None
