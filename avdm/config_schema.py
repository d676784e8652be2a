"""The schema of a config value: its type from the target's own type hints, its range from one table.

A node ``{_target_: X, key: value}`` is checked against ``X``'s signature: each value must fit the
parameter's annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``Sequence[X]``, ``Mapping``; other annotations accept anything), every float must be finite, and a
parameter whose *name* is in :data:`RANGES` must lie in its range (a learning rate > 0, a batch size
>= 1, ...), so that values torch.optim, Lightning or a data loader would refuse are refused here, by
key. The type hints are the schema: a parameter added to a constructor is checked without an entry
here. Every error is a :class:`~avdm.errors.ConfigError` ``<key>=<value>: <what is accepted>``.

Each rule has one owner, read by both sides: :func:`validate <avdm.config.validate>` checks a config
with it before anything is built, and the constructor checks its own arguments with the same rule and
the same message, by calling :func:`check_parameters` (or :func:`check_range` for one keyed value):

* :data:`RANGES`: the range of a parameter by name, wherever it appears;
* ``PARAM_RANGES``: a class attribute ``{name: Range}`` where one class needs another range for a name
  than :data:`RANGES` gives (the first class of the target's MRO that declares the name wins);
* :data:`ORDERS`: pairs of parameters of one call that lie in common bounds, strictly ordered
  (``0 <= t_min < t_max <= 1``), checked as one rule; the schema reads a partner left out of the config
  from the target's signature default;
* :func:`check_ladder`: a generator's timestep ladder.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
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
    """``low <= value <= high`` (strict where ``open_low`` / ``open_high``), odd where ``odd``;
    ``also``: more values."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    also: tuple[Any, ...] = ()
    odd: bool = False

    def accepts(self, value: float) -> bool:
        if value in self.also:
            return True
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below and (not self.odd or value % 2 == 1)

    def describe(self) -> str:
        left = "(" if self.open_low else "["
        right = ")" if self.open_high else "]"
        low = "-inf" if self.low == -math.inf else f"{self.low:g}"
        high = "inf" if self.high == math.inf else f"{self.high:g}"
        text = f"{'an odd' if self.odd else 'a'} number in {left}{low}, {high}{right}"
        return text + "".join(f" or {v}" for v in self.also)

    def check(self, key: str, value: Any) -> None:
        """Raise the schema's :class:`ConfigError` unless every number of ``value`` (a number or a list of
        them; anything else, ``None`` included, has no number to check) is finite and in the range."""
        _check_numbers(key, value, self)


_POSITIVE = Range(0.0, open_low=True)
_NON_NEGATIVE = Range(0.0)
_AT_LEAST_ONE = Range(1.0)
_FRACTION = Range(0.0, 1.0)

# Ranges by parameter name, wherever the parameter appears (loss, module, data, trainer, callbacks); a
# class that needs another range for one of these names declares it in its ``PARAM_RANGES``.
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
    # t_min, t_max: ORDERS
    "guidance_scale": _NON_NEGATIVE,
    # loss plugins (avdm/losses/) and the discriminator head they build
    "num_solver_steps": _AT_LEAST_ONE,
    "huber_c": _POSITIVE,
    "norm_eps": _POSITIVE,
    "min_snr_gamma": _POSITIVE,
    "logit_std": _POSITIVE,
    "head_channels": _AT_LEAST_ONE,
    "head_layers": _AT_LEAST_ONE,
    "temporal_kernel": Range(1.0, odd=True),
    "batch_size": _AT_LEAST_ONE,
    "num_workers": _NON_NEGATIVE,
    "num_samples": _AT_LEAST_ONE,
    "num_frames": _AT_LEAST_ONE,
    "resolution": _AT_LEAST_ONE,
    "num_videos": _AT_LEAST_ONE,
    "render_frames": _AT_LEAST_ONE,
    "render_size": _AT_LEAST_ONE,
    "frames_per_clip": _AT_LEAST_ONE,
    "kl_weight": _NON_NEGATIVE,
    "teacher_steps": _AT_LEAST_ONE,
    "teacher_guidance": _NON_NEGATIVE,
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


@dataclass(frozen=True)
class Order:
    """Parameters ``low`` and ``high`` of one call, each within ``bounds``, with ``low < high``: one rule,
    one message ``<key>.low=<low>, <key>.high=<high>: expected ...`` whichever part fails (``note``:
    what the pair is)."""

    low: str
    high: str
    bounds: Range = Range()
    note: str = ""

    def accepts(self, low: Any, high: Any) -> bool:
        """``None``: a value not given (only the other one's bounds are checked)."""
        inside = all(self.bounds.accepts(v) for v in (low, high) if _is_number(v))
        return inside and (not (_is_number(low) and _is_number(high)) or low < high)

    def describe(self) -> str:
        left = f"{self.bounds.low:g} {'<' if self.bounds.open_low else '<='} "
        right = f" {'<' if self.bounds.open_high else '<='} {self.bounds.high:g}"
        return f"{left if self.bounds.low > -math.inf else ''}{self.low} < {self.high}" + (
            right if self.bounds.high < math.inf else ""
        )

    def check(self, key: str, low: Any, high: Any) -> None:
        """``key``: the node's key prefix (``loss.sdm.``; ``""`` in a constructor)."""
        if not self.accepts(low, high):
            given = ((self.low, low), (self.high, high))
            shown = ", ".join(f"{key}{name}={_show(v)}" for name, v in given if v is not None)
            note = f" ({self.note})" if self.note else ""
            raise ConfigError(f"{shown}: expected {self.describe()}{note}")


ORDERS: tuple[Order, ...] = (
    Order("t_min", "t_max", _FRACTION, "t_min/t_max: noise levels, fractions of the teacher's T"),
)

# validate() checks a ladder before any teacher is built: every shipped teacher has 1000 timesteps.
DEFAULT_NUM_TRAIN_TIMESTEPS = 1000


def range_of(name: str, owner: Any = None) -> Range | None:
    """The range of parameter ``name`` of ``owner`` (a class, an instance or a function): the first
    ``PARAM_RANGES`` entry of its MRO, else :data:`RANGES`; ``None``: no range."""
    owner_class = owner if inspect.isclass(owner) or owner is None else type(owner)
    for cls in getattr(owner_class, "__mro__", ()):
        declared = vars(cls).get("PARAM_RANGES", {})
        if name in declared:
            return declared[name]
    return RANGES.get(name)


def check_range(key: str, value: Any, name: str | None = None, owner: Any = None) -> None:
    """Raise the schema's :class:`ConfigError` ``<key>=<value>: ...`` unless ``value`` is finite and in the
    range of parameter ``name`` (default: the last part of ``key``) of ``owner`` (:func:`range_of`).
    ``None`` and other values without a number pass: their type is the schema's or the caller's check.

    The one call for a constructor argument: ``check_range("module.ema_decay", ema_decay)``.
    """
    _check_numbers(key, value, range_of(name or _last_name(key), owner))


def check_parameters(owner: Any, key: str = "", **values: Any) -> None:
    """Check the arguments ``values`` of one call of ``owner``: each one's range (:func:`check_range`),
    then every :data:`ORDERS` pair among them. A constructor passes ``self``:
    ``check_parameters(self, t_min=t_min, t_max=t_max)``; ``key``: a prefix such as ``loss.sdm``."""
    prefix = f"{key}." if key else ""
    for name, value in values.items():
        check_range(f"{prefix}{name}", value, name, owner)
    _check_orders(prefix, values)


def check_ladder(key: str, ladder: Any, num_train_timesteps: float = DEFAULT_NUM_TRAIN_TIMESTEPS) -> None:
    """A generator's timestep ladder: a non-empty list of finite numbers, strictly decreasing, within
    ``[0, num_train_timesteps]`` (the teacher's; :func:`~avdm.config.validate` runs before any teacher is
    built and uses :data:`DEFAULT_NUM_TRAIN_TIMESTEPS`)."""
    if isinstance(ladder, tuple):
        ladder = list(ladder)
    if not isinstance(ladder, list) or not ladder:
        raise bad_value(key, ladder, "expected a non-empty list of timesteps, high to low")
    for step in ladder:
        check_value(key, "generator_timesteps", step, float)
    if any(a <= b for a, b in zip(ladder, ladder[1:])):
        raise bad_value(key, ladder, "expected strictly decreasing timesteps, e.g. [999, 749, 499, 249]")
    if ladder[-1] < 0 or ladder[0] > num_train_timesteps:
        accepted = f"expected timesteps in [0, {num_train_timesteps:g}] (the teacher's num_train_timesteps)"
        raise bad_value(key, ladder, accepted)


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _last_name(key: str) -> str:
    return key.rsplit(".", 1)[-1].split("[", 1)[0]


def _check_numbers(key: str, value: Any, rule: Range | None) -> None:
    numbers = _numbers(value)
    if any(not math.isfinite(n) or abs(n) > FLOAT32_MAX for n in numbers):
        raise bad_value(key, value, "must be finite, within float32's range (|x| <= 3.4e38; no nan or inf)")
    if rule is not None and numbers and not all(rule.accepts(n) for n in numbers):
        raise bad_value(key, value, f"expected {rule.describe()}")


def _check_orders(prefix: str, values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> None:
    defaults = defaults or {}
    for order in ORDERS:
        if order.low in values or order.high in values:
            low = values.get(order.low, defaults.get(order.low))
            high = values.get(order.high, defaults.get(order.high))
            order.check(prefix, low, high)


def check_value(key: str, name: str, value: Any, annotation: Any = Any, owner: Any = None) -> None:
    """Check one value: its type (``annotation``), finiteness and the range of parameter ``name`` of
    ``owner`` (:func:`range_of`)."""
    if isinstance(value, dict) and "_target_" in value:
        return  # a nested object: checked as a node of its own
    if not fits(value, annotation):
        raise bad_value(key, value, f"expected {_type_name(annotation)}")
    _check_numbers(key, value, range_of(name, owner))


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
    bases) and whether it still accepts any other name (a ``**kwargs`` that reaches outside avdm).

    A base's parameter that a subclass passes itself is no parameter of the subclass: the class lists it
    in ``FIXED_ARGUMENTS`` (``VideoSDMLoss``: ``teacher``, ``num_frames``)."""
    fixed = {n for cls in getattr(target, "__mro__", ()) for n in vars(cls).get("FIXED_ARGUMENTS", ())}
    names: list[str] = []
    open_ended = False
    for function in _forwarding_chain(target):
        open_ended = False
        for name, param in inspect.signature(function).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif param.kind is not inspect.Parameter.VAR_POSITIONAL and name != "self" and name not in names:
                names.append(name)
    return [n for n in names if n not in fixed], open_ended


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


def signature_defaults(target: Callable[..., Any]) -> dict[str, Any]:
    """The default values of ``target``'s parameters (a class: its ``__init__`` and the avdm bases its
    ``**kwargs`` reach; the first default of a name wins, as the call would)."""
    defaults: dict[str, Any] = {}
    for function in _forwarding_chain(target):
        for name, param in inspect.signature(function).parameters.items():
            if param.default is not inspect.Parameter.empty:
                defaults.setdefault(name, param.default)
    return defaults


def check_arguments(values: dict[str, Any], key: str, target: Callable[..., Any]) -> None:
    """Check every value given to ``target`` (already known to be one of its parameters): its type and
    range, then the :data:`ORDERS` pairs (a partner not given: ``target``'s default)."""
    hints = signature_hints(target)
    prefix = f"{key}." if key else ""
    for name, value in values.items():
        check_value(f"{prefix}{name}", name, value, hints.get(name, Any), target)
    if any(order.low in values or order.high in values for order in ORDERS):
        _check_orders(prefix, values, signature_defaults(target))
