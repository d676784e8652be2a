"""LoRA roles on one frozen base (peft): the generator and the fake scores as adapters of the teacher.

Every trainable role that starts as a copy of a teacher (the generator, an SDM fake score) can instead be
the teacher's own network plus a named LoRA adapter (:func:`add_lora`, peft's
``inject_adapter_in_model``, which diffusers' ``add_adapter`` also uses). The base weights then exist
once: the real scores and the discriminator backbone run them with every adapter off, each role runs them
with its own adapter on (:class:`AdapterDenoiser`).

The invariant that keeps roles apart: **outside an adapter view's call, every adapter of the network is
off**, so a plain teacher view needs no change. :func:`adapter_active` switches one adapter on for the
duration of a call and restores every ``requires_grad`` flag peft's switches touch (peft makes the active
adapter trainable and the others frozen; here the optimizers own those flags). A fresh adapter (B = 0) gives
exactly the base's output. Activations recomputed in the backward pass (gradient checkpointing) run after
the call has ended, when another adapter (or none) is on: :func:`forward_adapter_state` captures a block's
adapter state at its forward and puts it back for its recomputation
(:func:`~avdm.models.execution.enable_gradient_checkpointing`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from torch import Tensor, nn

from avdm.errors import ConfigError
from avdm.models.denoiser import Denoiser

# Attention projections of diffusers' UNets (spatial and motion transformer blocks) and Wan's transformer.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


_LAYERS = "_avdm_lora_layers"  # cached on the network: adapter_active runs on every role's call


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    cached = model.__dict__.get(_LAYERS)
    if cached is None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        cached = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        model.__dict__[_LAYERS] = cached
    return cached


def adapter_names(model: nn.Module) -> set[str]:
    """Names of the LoRA adapters injected into ``model``."""
    return {name for layer in _tuner_layers(model) for name in layer.lora_A}  # type: ignore[attr-defined]


def add_lora(
    model: nn.Module, name: str, settings: Mapping[str, Any], key: str = "lora"
) -> list[nn.Parameter]:
    """Inject adapter ``name`` (``B = 0``: the model's output is unchanged) and return its parameters,
    trainable, in float32. Every adapter of ``model`` is left off (see the module docstring).

    Args:
        settings: ``rank`` (LoRA ``r``, default 16), ``alpha`` (``alpha / r`` scales ``B A``; default
            ``alpha = r``), ``target_modules`` (module-name suffixes to adapt, peft's; default
            :data:`DEFAULT_TARGETS`).
        key: the config key the settings came from, named in errors.
    """
    unknown = sorted(set(settings) - {"rank", "alpha", "target_modules"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; accepted keys: rank, alpha, target_modules")
    rank = settings.get("rank", 16)
    alpha = settings.get("alpha")
    target_modules = list(settings.get("target_modules") or DEFAULT_TARGETS)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"{key}.rank={rank}: expected an integer >= 1")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
        raise ConfigError(f"{key}.alpha={alpha}: expected a number > 0 or null (= rank)")
    from peft import LoraConfig, inject_adapter_in_model

    if name in adapter_names(model):
        raise ConfigError(f"{key}: the network already has an adapter named {name!r}")
    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=target_modules
    )
    flags = {p: p.requires_grad for p in model.parameters()}
    model.__dict__.pop(_LAYERS, None)  # injection adds layers
    try:
        inject_adapter_in_model(config, model, adapter_name=name)
    except ValueError as err:  # peft: no module matched target_modules
        raise ConfigError(f"{key}.target_modules={list(target_modules)}: {err}") from None
    for p, flag in flags.items():
        p.requires_grad_(flag)
    params = [p for _, p in adapter_parameters(model, name)]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    model.__dict__.pop(_LAYERS, None)
    for layer in _tuner_layers(model):
        layer._disable_adapters = True  # peft's enable_adapters(False) would also freeze every adapter
    return params


@contextmanager
def adapter_active(model: nn.Module, name: str) -> Iterator[None]:
    """Run the block with adapter ``name`` on (and only it), then every adapter off again."""
    layers = _tuner_layers(model)
    flags = {p: p.requires_grad for layer in layers for p in layer.parameters()}
    previous = [layer.active_adapters for layer in layers]
    for layer in layers:
        layer.set_adapter(name)
        layer._disable_adapters = False
    try:
        yield
    finally:
        for layer, active in zip(layers, previous):
            layer.set_adapter(active)
            layer._disable_adapters = True
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _layer_state(layers: list[nn.Module]) -> tuple[list[tuple[Any, bool]], dict[nn.Parameter, bool]]:
    switches = [(layer.active_adapters, layer._disable_adapters) for layer in layers]
    return switches, {p: p.requires_grad for layer in layers for p in layer.parameters()}


@contextmanager
def _layers_set_to(
    layers: list[nn.Module], switches: list[tuple[Any, bool]], flags: dict[nn.Parameter, bool]
) -> Iterator[None]:
    found = _layer_state(layers)
    _set_layers(layers, switches, flags)
    try:
        yield
    finally:
        _set_layers(layers, *found)


def _set_layers(
    layers: list[nn.Module], switches: list[tuple[Any, bool]], flags: dict[nn.Parameter, bool]
) -> None:
    for layer, (active, disabled) in zip(layers, switches, strict=True):
        layer.set_adapter(active)  # peft also flips requires_grad here: the flags are put back below
        layer._disable_adapters = disabled
    for p, flag in flags.items():
        p.requires_grad_(flag)


def forward_adapter_state(block: nn.Module) -> AbstractContextManager[None]:
    """A context that, entered later, sets ``block``'s LoRA layers as they are now (which adapter is on,
    whether adapters are off, the ``requires_grad`` of their weights) and restores what it found on exit:
    what a checkpointed block's recomputation in the backward pass needs to run under its forward's role.
    A block without LoRA layers: a context that does nothing."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in block.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        return nullcontext()
    return _layers_set_to(layers, *_layer_state(layers))


def adapter_parameters(model: nn.Module, name: str) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of adapter ``name``'s LoRA weights in ``model``."""
    for param_name, p in model.named_parameters():
        if "lora_" in param_name and f".{name}." in param_name:
            yield param_name, p


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Adapter ``name``'s weights under peft's saved names (``...to_q.lora_A.weight``: the adapter name
    dropped), the form diffusers' ``save_lora_weights`` / ``load_lora_weights`` use. peft's own
    ``get_peft_model_state_dict`` is not used: with ``bias="none"`` it returns every adapter's weights of a
    network that holds several (here: the generator's and the fake score's)."""
    return {n.replace(f".{name}.", "."): p.detach().clone() for n, p in adapter_parameters(model, name)}


def adapter_config(model: nn.Module, name: str) -> dict[str, Any]:
    """Adapter ``name``'s ``LoraConfig`` fields (``r``, ``lora_alpha``, ``target_modules``: the adapted
    modules' full names), read from its layers; diffusers stores it beside saved LoRA weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = [
        (module_name, layer)
        for module_name, layer in model.named_modules()
        if isinstance(layer, BaseTunerLayer) and name in layer.lora_A  # type: ignore[attr-defined]
    ]
    if not found:
        raise ValueError(f"the network has no adapter named {name!r}")
    ranks = {layer.r[name] for _, layer in found}
    alphas = {layer.lora_alpha[name] for _, layer in found}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"adapter {name!r} has per-layer ranks {ranks} / alphas {alphas}")
    return {
        "r": ranks.pop(),
        "lora_alpha": alphas.pop(),
        "target_modules": sorted(module_name for module_name, _ in found),
    }


def merged_network(denoiser: Denoiser) -> nn.Module:
    """The network a denoiser runs, as a plain module: for an :class:`AdapterDenoiser`, a copy of the base
    with its adapter merged into the weights (``W + alpha / r B A``) and every LoRA layer removed, so it
    saves and loads as the original diffusers class; any other denoiser's network itself."""
    if not isinstance(denoiser, AdapterDenoiser):
        return denoiser.model
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = copy.deepcopy(denoiser.model)
    model.__dict__.pop(_LAYERS, None)  # its LoRA layers are removed below
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge(adapter_names=[denoiser.adapter])
                setattr(parent, child_name, child.get_base_layer())
    return model.requires_grad_(False)


class AdapterDenoiser(Denoiser):
    """A denoiser view that runs ``base``'s network with adapter ``adapter`` on.

    Shares every weight with ``base`` (the frozen teacher view); its only trainable parameters are the
    adapter's (:meth:`trainable_parameters`).
    """

    def __init__(self, base: Denoiser, adapter: str) -> None:
        super().__init__(base.model, base.schedule)
        self.base = base
        self.adapter = adapter

    def __getattr__(self, name: str) -> Any:
        """Attributes of the base view that are not modules or tensors (a transformer view's coordinate
        ``position`` channels, read by export) are this view's too."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__["_modules"].get("base")
            if base is None:
                raise
            return getattr(base, name)

    def _call_model(self, x_t: Tensor, timestep: Tensor, text: Tensor) -> Tensor:
        return self.base._call_model(x_t, timestep, text)

    def _feature_to_video(self, feature: Tensor, x_t: Tensor) -> Tensor:
        return self.base._feature_to_video(feature, x_t)

    @property
    def default_feature_layers(self) -> tuple[str, ...]:
        return self.base.default_feature_layers

    @property
    def temporal_compression(self) -> int:  # type: ignore[override]
        return self.base.temporal_compression

    def forward(self, x_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        with adapter_active(self.model, self.adapter):
            return super().forward(x_t, t, text)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return adapter_parameters(self.model, self.adapter)
