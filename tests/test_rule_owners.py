"""One owner per rule (issue 27): the config check and the constructors accept the same values.

Every rule of :mod:`avdm.config_schema` (each :data:`~avdm.config_schema.RANGES` entry, each class's
``PARAM_RANGES`` override, each :data:`~avdm.config_schema.ORDERS` pair, the generator's ladder) is
checked against every avdm class that takes a parameter of that name: the loss plugins, the generator,
and the avdm targets the schema checks (``_target_`` of ``conf/``, the tools' ``calls``). At the
boundary values (each finite end, just inside, just outside; float32's end for an open-ended float) a
value the schema accepts is accepted by the constructor, and a value it refuses is refused by the
constructor with the schema's own one-line message (up to the config key in front of the name).

Lightning's own classes (``lightning.Trainer``, ``ModelCheckpoint``, loggers) are left out: the schema
is deliberately stricter there (``trainer.max_steps=0``). The only values the schema
accepts and a builder refuses are those of ``SHAPE_RULES``: shape rules of the built VAE.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from torch import nn

import avdm.losses
from avdm.config import CONFIG_DIR
from avdm.config_schema import (
    DEFAULT_NUM_TRAIN_TIMESTEPS,
    FLOAT32_MAX,
    ORDERS,
    RANGES,
    Order,
    Range,
    call_parameters,
    check_arguments,
    check_ladder,
    range_of,
    signature_hints,
)
from avdm.errors import ConfigError
from avdm.losses import ConsistencyDistillationLoss, DenoisingGANLoss, DistillationLoss, TeacherBank
from avdm.models.generator import FewStepGenerator

# The tools whose validate_command(calls={...}) checks classes that are no _target_ of conf/.
TOOLS = ("avdm.synthesize", "avdm.precompute")

# Holders that cannot be built without written data; their ranged parameters are the data modules'
# (batch_size, num_workers), checked by StoredLatentDataModule._configure with check_parameters as the
# data modules built here check theirs.
NOT_BUILT = {
    "LatentCacheDataModule": "reads a written latent cache's index in its constructor",
    "SynVidDataModule": "reads a written SynVid folder's index in its constructor",
}

# (rule, builder) -> the prefix of the builder's message for a value in range that breaks a shape rule of
# the built VAE / patch size (a multiple of its factor, 1 + 4k frames), which no config check can know
# before the VAE exists. Values the range refuses must still be refused with the schema's message.
SHAPE_RULES = {
    ("resolution", "build_animatediff"): "model.resolution must be a multiple of the VAE factor",
    ("num_frames", "build_wan"): "model.num_frames must be 1 + ",
    ("resolution", "build_wan"): "model.resolution must be a multiple of ",
}


# --- the holders: every avdm class (or builder) the rules apply to ---------------------------------


def _loss_classes() -> list[type]:
    found, todo = [], [DistillationLoss]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("avdm.losses") and not inspect.isabstract(cls) and cls not in found:
            found.append(cls)
    return found


def _tool_calls() -> set[str]:
    """``module.Class`` of each value of a tool's ``calls={...}``, read from the tool's source (the
    classes are imported inside the tool's function)."""
    names = set()
    for tool in TOOLS:
        tree = ast.parse(inspect.getsource(importlib.import_module(tool)))
        imported = {
            alias.asname or alias.name: f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "calls" and isinstance(node.value, ast.Dict):
                names.update(imported[v.id] for v in node.value.values if isinstance(v, ast.Name))
    assert names, f"no calls={{...}} found in {TOOLS}"
    return names


def _config_targets() -> list[Callable[..., Any]]:
    names = _tool_calls()
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        names.update(re.findall(r"_target_:\s*(avdm\.[\w.]+)", path.read_text()))
    return [get_object(name) for name in sorted(names)]


def _holders() -> list[Callable[..., Any]]:
    assert avdm.losses.__all__  # every plugin class is imported, so __subclasses__ sees it
    holders: list[Callable[..., Any]] = [*_loss_classes(), FewStepGenerator]
    for target in _config_targets():
        if target not in holders:
            holders.append(target)
    return holders


def _overridden_names(holder: Any) -> set[str]:
    return {n for cls in getattr(holder, "__mro__", ()) for n in vars(cls).get("PARAM_RANGES", {})}


def _range_cases() -> list[Any]:
    holders = _holders()
    rule_names = set(RANGES).union(*(_overridden_names(h) for h in holders))
    cases = []
    for name in sorted(rule_names):
        for holder in holders:
            if name in call_parameters(holder)[0] and range_of(name, holder) is not None:
                marks = []
                if holder.__name__ in NOT_BUILT:
                    marks.append(pytest.mark.skip(reason=NOT_BUILT[holder.__name__]))
                cases.append(pytest.param(name, holder, marks=marks, id=f"{name}-{holder.__name__}"))
    return cases


def _order_cases() -> list[Any]:
    cases = []
    for order in ORDERS:
        for holder in _holders():
            params = call_parameters(holder)[0]
            if order.low in params and order.high in params:
                cases.append(pytest.param(order, holder, id=f"{order.low}<{order.high}-{holder.__name__}"))
    return cases


RANGE_CASES = _range_cases()
ORDER_CASES = _order_cases()


# --- building a holder with one argument changed --------------------------------------------------


class Builder:
    """Calls a holder with the few arguments it needs besides the one under test (tiny everything)."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.request, self.tmp = request, tmp_path

    def bundle(self) -> Any:
        return self.request.getfixturevalue("tiny_bundle")

    def _csv(self) -> str:
        csv = self.tmp / "clips.csv"
        csv.write_text("video,caption\na.mp4,a red ball\n")
        return str(csv)

    def _model(self, name: str, holder: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        node = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{name}.yaml"))
        node.pop("_target_")
        return holder(**{**node, **kwargs})

    def __call__(self, holder: Callable[..., Any], **kwargs: Any) -> Any:
        name = holder.__name__
        if name == "DistillationModule":
            from avdm.losses import DenoisingLoss

            base = {"generator_timesteps": (999, 499), "critic_steps_per_generator_step": 1}
            return holder(self.bundle(), {"denoising": DenoisingLoss()}, **{**base, **kwargs})
        if name == "AutoencoderModule":
            return holder(self.bundle(), **kwargs)
        if name == "build_animatediff":
            return self._model("animatediff_tiny", holder, kwargs)
        if name == "build_wan":
            return self._model("wan_tiny", holder, kwargs)
        base: dict[str, Any] = {
            "SyntheticLatentDataModule": {"latent_shape": [4, 2, 8, 8]},
            "OpenVidDataModule": {"csv": str(self.tmp / "clips.csv"), "video_dir": str(self.tmp)},
            "OpenVidDataset": {"csv": self._csv(), "video_dir": str(self.tmp)}
            if name == "OpenVidDataset"
            else {},
            "ShapesDataModule": {"root": str(self.tmp / "shapes")},
            "SampleVideos": {"output_dir": str(self.tmp / "samples")},
        }.get(name, {})
        return holder(**{**base, **kwargs})


@pytest.fixture
def build(request: pytest.FixtureRequest, tmp_path: Path) -> Builder:
    return Builder(request, tmp_path)


# --- the values --------------------------------------------------------------------------------------


def _is_integer(annotation: Any) -> bool:
    if annotation is int:
        return True
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return int in args and float not in args
    return bool(args) and all(a is int for a in args if a is not Ellipsis)


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return isinstance(origin, type) and issubclass(origin, Sequence) and not issubclass(origin, str)


def boundary_values(rule: Range, integer: bool) -> list[float]:
    """Each finite end, just inside and just outside it; the ``also`` values; for a float range open to
    infinity, float32's largest value and inf (the schema's finite bound)."""
    values: list[float] = []
    for end, inward in ((rule.low, math.inf), (rule.high, -math.inf)):
        if not math.isfinite(end):
            continue
        if integer:
            step = 1 if inward > 0 else -1
            values += [int(end), int(end) + step, int(end) - step]
            if rule.odd:
                values.append(int(end) + 2 * step)
        else:
            values += [end, math.nextafter(end, inward), math.nextafter(end, -inward)]
    values += list(rule.also)
    if not integer and rule.high == math.inf:
        values += [FLOAT32_MAX, math.inf]
    return values


def _schema_message(values: dict[str, Any], holder: Callable[..., Any]) -> str | None:
    """``None`` if the schema (the check validate runs on a node of ``holder``) accepts ``values``."""
    try:
        check_arguments(values, "", holder)
    except ConfigError as err:
        return str(err)
    return None


def _constructor_message(build: Builder, holder: Callable[..., Any], values: dict[str, Any]) -> str | None:
    try:
        build(holder, **values)
    except ValueError as err:  # ConfigError is one
        return " ".join(str(err).split())
    return None


def _assert_agree(
    schema: str | None, constructor: str | None, what: str, shape_rule: str | None = None
) -> None:
    if schema is None and shape_rule is not None and constructor is not None:
        assert constructor.startswith(shape_rule), f"{what}: refused for another reason than the shape rule"
        return
    if schema is None:
        assert constructor is None, f"{what}: the schema accepts it, the constructor refuses: {constructor}"
        return
    assert constructor is not None, f"{what}: the schema refuses it ({schema}), the constructor accepts it"
    # The same text; a constructor that knows its config key may put it in front of the name.
    assert constructor == schema or constructor.endswith(f".{schema}"), (
        f"{what}: the constructor says {constructor!r}, the schema {schema!r}"
    )


# --- the tests ---------------------------------------------------------------------------------------


def test_the_holders_are_found() -> None:
    cases = {(p.values[0], p.values[1].__name__) for p in RANGE_CASES}
    assert ("ema_decay", "ConsistencyDistillationLoss") in cases
    assert ("ema_decay", "DistillationModule") in cases
    assert ("weight", "TrajectoryGANLoss") in cases and ("guidance_scale", "FrameSDMLoss") in cases
    assert ("temporal_kernel", "DenoisingGANLoss") in cases
    assert {p.values[1].__name__ for p in ORDER_CASES} >= {
        "DenoisingLoss",
        "DenoisingGANLoss",
        "FrameSDMLoss",
    }


@pytest.mark.parametrize(("name", "holder"), RANGE_CASES)
def test_constructor_agrees_with_the_range(name: str, holder: Callable[..., Any], build: Builder) -> None:
    annotation = signature_hints(holder).get(name, Any)
    rule = range_of(name, holder)
    assert rule is not None
    for value in boundary_values(rule, _is_integer(annotation)):
        given = [value, value] if _is_list(annotation) else value
        values = {name: given}
        schema, constructor = _schema_message(values, holder), _constructor_message(build, holder, values)
        _assert_agree(schema, constructor, f"{values}", SHAPE_RULES.get((name, holder.__name__)))


def _order_values(order: Order) -> Iterator[dict[str, float]]:
    low, high = order.bounds.low, order.bounds.high
    mid = (low + high) / 2
    for a, b in [
        (low, high),
        (low, math.nextafter(low, math.inf)),
        (math.nextafter(high, -math.inf), high),
        (mid, mid),
        (math.nextafter(mid, math.inf), mid),
        (math.nextafter(low, -math.inf), high),
        (low, math.nextafter(high, math.inf)),
    ]:
        yield {order.low: a, order.high: b}
    # one of the pair given: the other is the constructor's default, for the schema as for the call
    for value in (low, math.nextafter(high, -math.inf), high, mid):
        yield {order.low: value}
        yield {order.high: value}


@pytest.mark.parametrize(("order", "holder"), ORDER_CASES)
def test_constructor_agrees_with_the_order(order: Order, holder: Callable[..., Any], build: Builder) -> None:
    for values in _order_values(order):
        _assert_agree(
            _schema_message(values, holder), _constructor_message(build, holder, values), f"{values}"
        )


LADDERS = [
    [999, 749, 499, 249],
    [DEFAULT_NUM_TRAIN_TIMESTEPS],
    [math.nextafter(DEFAULT_NUM_TRAIN_TIMESTEPS, math.inf)],
    [0],
    [-5e-324],
    [1000, 500, 0],
    [499, math.nextafter(499, 0)],
    [499, 499],
    [249, 499],
    [],
    [999, math.nan],
    [math.inf, 0],
]


@pytest.mark.parametrize("ladder", LADDERS, ids=[str(x) for x in LADDERS])
def test_generator_agrees_with_the_ladder_rule(ladder: list[float], tiny_bundle: Any) -> None:
    teacher = tiny_bundle.video_teacher
    assert teacher.schedule.num_train_timesteps == DEFAULT_NUM_TRAIN_TIMESTEPS
    key = "module.generator_timesteps"
    try:
        check_ladder(key, ladder)
        schema = None
    except ConfigError as err:
        schema = str(err)
    try:
        FewStepGenerator(teacher, ladder)
        constructor = None
    except ValueError as err:
        constructor = str(err)
    _assert_agree(schema, constructor, f"{key}={ladder}")


def test_consistency_ema_decay_zero_makes_the_target_the_online_network(tiny_bundle: Any) -> None:
    """``mu = 0`` is accepted by both sides, and after one update the target holds the online weights."""
    from avdm.losses.base import StepContext
    from avdm.models.denoiser import trainable_copy

    assert _schema_message({"ema_decay": 0.0}, ConsistencyDistillationLoss) is None
    loss = ConsistencyDistillationLoss(ema_decay=0.0)
    loss.bind(TeacherBank(tiny_bundle.video_teacher))
    generator = FewStepGenerator(trainable_copy(tiny_bundle.video_teacher), [999, 499])
    with torch.no_grad():
        for p in generator.denoiser.parameters():
            p.add_(torch.randn_like(p))
    ctx = StepContext(x0_fake=None, text=torch.zeros(1), batch={}, teachers=None, generator=generator)  # type: ignore[arg-type]
    loss.after_generator_step(ctx)
    for p_target, p_online in zip(loss.target.parameters(), generator.denoiser.parameters(), strict=True):
        assert torch.equal(p_target, p_online)


def test_module_ema_decay_keeps_the_open_interval() -> None:
    from avdm.training.distillation import DistillationModule

    assert range_of("ema_decay", DistillationModule) is RANGES["ema_decay"]
    assert _schema_message({"ema_decay": 0.0}, DistillationModule) == (
        "ema_decay=0.0: expected a number in (0, 1)"
    )
    assert _schema_message({"ema_decay": None}, DistillationModule) is None
    assert range_of("ema_decay", ConsistencyDistillationLoss) == Range(0.0, 1.0, open_high=True)


# --- the discriminator's old key names -----------------------------------------------------------


SMALL_HEAD = {"feature_layers": ["down_blocks.1", "mid_block"], "head_channels": 8, "head_layers": 1}


def test_a_state_dict_with_disc_head_keys_loads_bit_for_bit(tiny_bundle: Any) -> None:
    teachers = TeacherBank(tiny_bundle.video_teacher)
    torch.manual_seed(1)
    saved = DenoisingGANLoss(**SMALL_HEAD)
    saved.bind(teachers)
    new_keys = saved.state_dict()
    assert new_keys and all(k.startswith("discriminator.") for k in new_keys)
    old = {k.replace("discriminator.", "disc_head.", 1): v.clone() for k, v in new_keys.items()}

    torch.manual_seed(2)
    plugin = DenoisingGANLoss(**SMALL_HEAD)
    plugin.bind(teachers)
    assert any(not torch.equal(v, plugin.state_dict()[k]) for k, v in new_keys.items())
    plugin.load_state_dict(old)  # strict: every key found, none left over
    assert all(torch.equal(v, new_keys[k]) for k, v in plugin.state_dict().items())
    assert list(old) == [k.replace("discriminator.", "disc_head.", 1) for k in new_keys]  # caller's copy

    # inside a module, as a checkpoint of the LightningModule holds it (losses.gan.disc_head...)
    torch.manual_seed(3)
    holder = nn.Module()
    holder.losses = nn.ModuleDict({"gan": DenoisingGANLoss(**SMALL_HEAD)})
    holder.losses["gan"].bind(teachers)
    holder.load_state_dict({f"losses.gan.{k}": v for k, v in old.items()})
    assert all(torch.equal(v, new_keys[k]) for k, v in holder.losses["gan"].state_dict().items())

    # what a resume compares before loading: the plugin renames a checkpoint's keys in place
    checkpoint = {f"losses.gan.{k}": v for k, v in old.items()} | {"generator_steps": torch.tensor(3)}
    holder.losses["gan"].rename_legacy_keys(checkpoint, "losses.gan.")
    assert set(checkpoint) == {f"losses.gan.{k}" for k in new_keys} | {"generator_steps"}
