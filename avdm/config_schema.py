"""The schema of a config value: its type from the target's own type hints, its range from one table.

A node ``{_target_: X, key: value}`` is checked against ``X``'s signature: each value must fit the
parameter's annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``Sequence[X]``, ``Mapping``; other annotations accept anything), every float must be finite, and a
parameter whose *name* is in :data:`RANGES` must lie in its range (a learning rate > 0, a batch size
>= 1, ...), so that values torch.optim, Lightning or a data loader would refuse are refused here, by
key. The type hints are the schema: a parameter added to a constructor is checked without an entry
here. Every error is a :class:`~avdm.errors.ConfigError` ``<key>=<value>: <what is accepted>``.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from avdm.errors import ConfigError

FLOAT32_MAX = 3.4028234663852886e38  # values become float32 tensors (losses, learning rates)


def bad_value(key: str, value: Any, accepted: str) -> ConfigError:
    """The one-line error ``<key>=<value>: <accepted>``."""
    return ConfigError(f"{key}={_show(value)}: {accepted}")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (strict where ``open_low`` / ``open_high``); ``also``: more values."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    also: tuple[Any, ...] = ()

    def accepts(self, value: float) -> bool:
        if value in self.also:
            return True
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        left = "(" if self.open_low else "["
        right = ")" if self.open_high else "]"
        low = "-inf" if self.low == -math.inf else f"{self.low:g}"
        high = "inf" if self.high == math.inf else f"{self.high:g}"
        text = f"a number in {left}{low}, {high}{right}"
        return text + "".join(f" or {v}" for v in self.also)


_POSITIVE = Range(0.0, open_low=True)
_NON_NEGATIVE = Range(0.0)
_AT_LEAST_ONE = Range(1.0)
_FRACTION = Range(0.0, 1.0)

# Ranges by parameter name, wherever the parameter appears (loss, module, data, trainer, callbacks).
RANGES: dict[str, Range] = {
    "weight": _NON_NEGATIVE,
    "lr": _POSITIVE,
    "critic_lr": _POSITIVE,
    "weight_decay": _NON_NEGATIVE,
    "warmup_steps": _NON_NEGATIVE,
    "grad_clip_norm": _POSITIVE,
    "max_consecutive_nonfinite": _AT_LEAST_ONE,
    "critic_steps_per_generator_step": _AT_LEAST_ONE,
    "ema_decay": Range(0.0, 1.0, open_low=True, open_high=True),
    "betas": Range(0.0, 1.0, open_high=True),
    "uncond_prob": _FRACTION,
    "t_min": _FRACTION,
    "t_max": _FRACTION,
    "guidance_scale": _NON_NEGATIVE,
    "batch_size": _AT_LEAST_ONE,
    "num_workers": _NON_NEGATIVE,
    "num_samples": _AT_LEAST_ONE,
    "num_frames": _AT_LEAST_ONE,
    "resolution": _AT_LEAST_ONE,
    "shard_size": _AT_LEAST_ONE,
    # Lightning's Trainer: max_steps -1 means "no limit"; 0 trains nothing and still exits 0.
    "max_steps": Range(1.0, also=(-1,)),
    "max_epochs": Range(1.0, also=(-1,)),
    "log_every_n_steps": _AT_LEAST_ONE,
    "accumulate_grad_batches": _AT_LEAST_ONE,
    "every_n_train_steps": _NON_NEGATIVE,
    "every_n_steps": _NON_NEGATIVE,
    "save_top_k": Range(-1.0),
    "gradient_clip_val": _NON_NEGATIVE,
    "fps": _AT_LEAST_ONE,
    "num_steps": _AT_LEAST_ONE,
    "stride": _AT_LEAST_ONE,
    "max_shards": _AT_LEAST_ONE,
    "limit": _AT_LEAST_ONE,
}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is not None and isinstance(origin, type) and issubclass(origin, cabc.Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is not None and isinstance(origin, type) and issubclass(origin, cabc.Mapping):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def fits(value: Any, annotation: Any) -> bool:
    """Whether a plain config value (from ``OmegaConf.to_container``) fits a type annotation.

    Annotations this cannot judge (classes such as ``torch.nn.Module``, callables, ``Any``) accept
    anything: the target itself then decides.
    """
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str or annotation is Path:
        return isinstance(value, str)
    if origin is not None and isinstance(origin, type):
        if issubclass(origin, cabc.Mapping):
            return isinstance(value, dict)
        if issubclass(origin, (cabc.Sequence, cabc.Set)) and not issubclass(origin, str):
            if not isinstance(value, list):
                return False
            args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            return not args or all(fits(v, args[0]) for v in value)
    if annotation in (list, tuple, cabc.Sequence):
        return isinstance(value, list)
    if annotation in (dict, cabc.Mapping):
        return isinstance(value, dict)
    return True


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def check_value(key: str, name: str, value: Any, annotation: Any = Any) -> None:
    """Check one value: its type (``annotation``), finiteness and the range of parameter ``name``."""
    if isinstance(value, dict) and "_target_" in value:
        return  # a nested object: checked as a node of its own
    if not fits(value, annotation):
        raise bad_value(key, value, f"expected {_type_name(annotation)}")
    numbers = _numbers(value)
    if any(not math.isfinite(n) or abs(n) > FLOAT32_MAX for n in numbers):
        raise bad_value(key, value, "must be finite, within float32's range (|x| <= 3.4e38; no nan or inf)")
    rule = RANGES.get(name)
    if rule is not None and numbers and not all(rule.accepts(n) for n in numbers):
        raise bad_value(key, value, f"expected {rule.describe()}")


def _forwarding_chain(target: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The ``__init__`` functions a call of ``target`` reaches by name: its own and, while an avdm class's
    ``__init__`` takes ``**kwargs``, those of the avdm bases it forwards them to (``super().__init__``)."""
    if not inspect.isclass(target):
        return [target]
    chain = []
    for cls in target.__mro__:
        if "__init__" not in vars(cls):
            continue
        if chain and not cls.__module__.startswith("avdm."):
            break
        chain.append(vars(cls)["__init__"])
        takes_more = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls).parameters.values()
        )
        if not (takes_more and cls.__module__.startswith("avdm.")):
            break
    return chain or [target.__init__]  # type: ignore[misc]


def call_parameters(target: Callable[..., Any]) -> tuple[list[str], bool]:
    """The parameter names a call of ``target`` accepts (``**kwargs`` of avdm classes followed to their
    bases) and whether it still accepts any other name (a ``**kwargs`` that reaches outside avdm)."""
    names: list[str] = []
    open_ended = False
    for function in _forwarding_chain(target):
        open_ended = False
        for name, param in inspect.signature(function).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif param.kind is not inspect.Parameter.VAR_POSITIONAL and name != "self" and name not in names:
                names.append(name)
    return names, open_ended


def signature_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated type hints of ``target``'s parameters (a class: its ``__init__`` and the avdm bases its
    ``**kwargs`` reach); {} if unknown."""
    hints: dict[str, Any] = {}
    for function in reversed(_forwarding_chain(target)):
        try:
            hints.update(typing.get_type_hints(function))
        except Exception:  # hints naming TYPE_CHECKING-only imports cannot be evaluated: no type checks
            pass
    return hints


def check_arguments(values: dict[str, Any], key: str, target: Callable[..., Any]) -> None:
    """Check every value given to ``target`` (already known to be one of its parameters)."""
    hints = signature_hints(target)
    for name, value in values.items():
        check_value(f"{key}.{name}" if key else name, name, value, hints.get(name, Any))
