"""The memory plan of a run: one table per process of the bytes each role holds, the activation peak, the
total, and (when it exceeds the device) the settings that would fit.

Counted: every role's weights (in their dtype), float32 gradients (one role's at a time: each optimizer's
``zero_grad(set_to_none=True)`` after its step frees them, so the largest role's count) and two float32
AdamW moments of every trainable role, and autograd's saved activations at the peak phase
(:mod:`avdm.training.memory.passes`). Under FSDP2 (``trainer=fsdp2``) sharded roles divide by the world
size. Left out: the CUDA context and kernels' workspaces, allocator fragmentation and caching, NCCL
buffers, FSDP2's gathered units, the data batch, the text encoder's and VAE's forward (no graph).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from avdm.models.lora import DEFAULT_TARGETS
from avdm.training.memory.passes import ActivationPeak, RunShape, activation_peak
from avdm.training.memory.role_bytes import Role, module_roles

GB = 1e9


@dataclass(frozen=True)
class PlanSettings:
    """What the plan depends on beyond the built module (the config's values; re-planning changes them)."""

    batch: int
    precision: str = "32-true"
    param_dtype: str | None = None  # FSDP2's gathered weights (module.sharding.param_dtype)
    attention: str = "flash"
    checkpointing: bool = False
    generator_lora: int = 0
    fake_score_lora: int = 0
    fsdp: bool = False
    world_size: int = 1
    has_ema: bool = False


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per process: ``roles`` (weights, gradients, AdamW per role), the activation peak, the total."""

    roles: tuple[tuple[str, str, int, int, int], ...]  # name, dtype, weights, gradients, AdamW
    activation: ActivationPeak
    settings: PlanSettings
    device_memory: int | None = None

    @property
    def total(self) -> int:
        weights = sum(r[2] + r[4] for r in self.roles)
        return weights + max((r[3] for r in self.roles), default=0) + self.activation.bytes

    def to_json(self) -> dict[str, Any]:
        """One key per role (``{weights, gradients, adamw}`` bytes), ``activation_peak``, ``total``."""
        out: dict[str, Any] = {
            name: {"dtype": dtype, "weights": w, "gradients": g, "adamw": a}
            for name, dtype, w, g, a in self.roles
        }
        out["activation_peak"] = self.activation.bytes
        out["activation_phase"] = self.activation.phase
        out["total"] = self.total
        out["device_memory"] = self.device_memory
        out["world_size"] = self.settings.world_size if self.settings.fsdp else 1
        return out

    def flat(self) -> dict[str, int]:
        """``plan/<role>`` bytes (weights + gradients + AdamW), ``plan/activation_peak``, ``plan/total``."""
        out = {f"plan/{_slug(name)}": w + g + a for name, _, w, g, a in self.roles}
        return {**out, "plan/activation_peak": self.activation.bytes, "plan/total": self.total}


def _slug(name: str) -> str:
    """``frozen base (teachers, float32)`` -> ``frozen_base_teachers_float32``: a logger-safe key."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def lora_params(network: nn.Module, rank: int, targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Parameters of a rank-``rank`` LoRA adapter on ``network``'s linears named ``*.{target}``:
    ``r (in + out)`` each (what :func:`~avdm.models.lora.add_lora` injects)."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in network.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith(f".{t}") for t in targets)
    )


def _e(precision: str, param_dtype: str | None) -> int:
    half = precision.startswith(("bf16", "16")) or param_dtype in ("bfloat16", "float16")
    return 2 if half else 4


def _roles(module: nn.Module, s: PlanSettings) -> list[Role]:
    """The built module's roles, with full copies swapped for LoRA adapters when ``s`` asks for them."""
    roles = module_roles(module)
    if s.generator_lora and not any(r.name.startswith("generator (LoRA") for r in roles):
        n = lora_params(module.teachers.video.model, s.generator_lora)
        roles = [r for r in roles if r.name != "generator"]
        roles.insert(0, Role(f"generator (LoRA r{s.generator_lora})", 4 * n, n, "float32", True, True))
        # A LoRA generator's EMA is a second adapter (avdm.training.adapter_ema), not a copy of the network.
        roles = [Role("generator ema (LoRA)", 4 * n, n, "float32", False, True) if r.name == "generator EMA"
                 else r for r in roles]  # fmt: skip
    if s.fake_score_lora:
        for name, plugin in module.losses.items():
            i = next((i for i, r in enumerate(roles) if r.name == f"{name} fake score"), None)
            if i is not None:
                n = lora_params(plugin.fake_score.model, s.fake_score_lora)
                roles[i] = Role(
                    f"{name} fake score (LoRA r{s.fake_score_lora})", 4 * n, n, "float32", True, True
                )
    return roles


def plan_module(module: nn.Module, s: PlanSettings, device_memory: int | None = None) -> MemoryPlan:
    """The plan of a built DistillationModule (meta or real weights) under settings ``s``; analytic, no
    forward pass."""
    world = s.world_size if s.fsdp else 1
    rows = []
    for r in _roles(module, s):
        div = world if r.sharded else 1
        rows.append((r.name, r.dtype, r.weights // div, r.gradients // div, r.adamw // div))
    e = _e(s.precision, s.param_dtype)
    e_frozen = 2 if module.teacher_dtype != "float32" else e
    text = int(getattr(module.prompt_encoder, "max_length", 77) or 77)
    run = RunShape(s.batch, tuple(module.latent_shape), text, e, e_frozen, s.checkpointing, s.attention,
                   s.generator_lora, s.fake_score_lora)  # fmt: skip
    return MemoryPlan(tuple(rows), activation_peak(module, run), s, device_memory)


def _lora_rank(node: Any) -> int:
    if node is None:
        return 0
    return int(node.get("rank", 16)) if isinstance(node, Mapping) else 16


def settings_from_config(cfg: Any, module: nn.Module, attention: str = "flash") -> PlanSettings:
    """The plan settings of a composed training config (``data.batch_size``, ``trainer.precision``,
    ``trainer.strategy``, ``trainer.devices`` x ``trainer.num_nodes``, ``module.*``, the loss plugins)."""
    from omegaconf import OmegaConf

    trainer = OmegaConf.to_container(cfg.trainer, resolve=False)
    strategy = trainer.get("strategy")
    fsdp = isinstance(strategy, Mapping) and "ShardedStrategy" in str(strategy.get("_target_", ""))
    devices = trainer.get("devices", 1)
    if not isinstance(devices, int):
        import torch

        devices = max(torch.cuda.device_count(), 1) if devices == "auto" else len(devices)
    mod = cfg.module
    fake = [_lora_rank(n.get("fake_score_lora")) for n in (cfg.get("loss") or {}).values() if n is not None]
    return PlanSettings(
        batch=int(cfg.data.batch_size),
        precision=str(trainer.get("precision", "32-true")),
        param_dtype=(mod.get("sharding") or {}).get("param_dtype") if fsdp else None,
        attention=attention,
        checkpointing=bool(mod.get("gradient_checkpointing", False)),
        generator_lora=_lora_rank(mod.get("generator_lora")),
        fake_score_lora=max(fake, default=0),
        fsdp=fsdp,
        world_size=devices * int(trainer.get("num_nodes", 1) or 1),
        has_ema=mod.get("ema_decay") is not None,
    )


def _candidates(s: PlanSettings) -> list[tuple[str, PlanSettings]]:
    """Single changes, cheapest first: recomputation, LoRA roles, more FSDP2 processes, a smaller batch;
    then recomputation with each of the others."""
    found: list[tuple[str, PlanSettings]] = []
    if not s.checkpointing:
        found.append(("module.gradient_checkpointing=true", replace(s, checkpointing=True)))
    if not (s.generator_lora and s.fake_score_lora):
        found.append(("module.generator_lora={rank:16} loss.sdm.fake_score_lora={rank:16}",
                      replace(s, generator_lora=16, fake_score_lora=16)))  # fmt: skip
    for n in (2, 4, 8, 16, 32, 64):
        if n > (s.world_size if s.fsdp else 1):
            found.append((f"trainer=fsdp2 trainer.devices={n}", replace(s, fsdp=True, world_size=n,
                          param_dtype=s.param_dtype or "bfloat16", precision="32-true")))  # fmt: skip
    b = s.batch // 2
    while b >= 1:
        found.append((f"data.batch_size={b}", replace(s, batch=b)))
        b //= 2
    singles = list(found)
    if not s.checkpointing:
        for text, c in singles[1:]:
            found.append((f"module.gradient_checkpointing=true {text}", replace(c, checkpointing=True)))
    return found


def fitting_settings(module: nn.Module, s: PlanSettings, limit: int, most: int = 4) -> list[tuple[str, int]]:
    """Up to ``most`` changes (override text, planned total) whose re-planned total fits in ``limit``
    bytes, in the order of :func:`_candidates` (by what they cost); one kind of change each."""
    fits: list[tuple[str, int]] = []
    kinds: set[str] = set()
    for text, c in _candidates(s):
        kind = text.split("=")[0]
        if kind in kinds:
            continue
        total = plan_module(module, c).total
        if total <= limit:
            fits.append((text, total))
            kinds.add(kind)
        if len(fits) >= most:
            break
    return fits


def warning_line(module: nn.Module, plan: MemoryPlan, limit: int) -> str:
    """One line: the total over ``limit`` and the settings that would fit (or that none does)."""
    fits = fitting_settings(module, plan.settings, limit)
    head = f"memory plan: {plan.total / GB:.1f} GB per process exceeds {limit / GB:.1f} GB"
    if not fits:
        tried = "checkpointing, LoRA roles, FSDP2 up to 64 processes, batch 1, and checkpointing with each"
        return f"{head}; no setting tried fits ({tried})"
    return head + "; would fit: " + "; ".join(f"{t} ({total / GB:.1f} GB)" for t, total in fits)


def format_table(plan: MemoryPlan) -> str:
    """The plan as one text table (GB, 1e9 bytes)."""
    s = plan.settings
    world = f"FSDP2 over {s.world_size} processes" if s.fsdp else "1 process (no sharding)"
    lines = [
        f"memory plan per process: batch {s.batch}, precision {s.precision}, attention {s.attention}, "
        f"checkpointing {'on' if s.checkpointing else 'off'}, {world}",
        f"{'role':<44} {'dtype':<9} {'weights':>9} {'grads':>9} {'AdamW':>9}",
    ]
    for name, dtype, w, g, a in plan.roles:
        lines.append(f"{name:<44} {dtype:<9} {w / GB:>8.2f}G {g / GB:>8.2f}G {a / GB:>8.2f}G")
    act = plan.activation
    passes = ", ".join(f"{label} {b / GB:.2f}G" for label, b in act.passes)
    lines.append(f"{'activation peak (' + act.phase + ')':<44} {'':<9} {act.bytes / GB:>8.2f}G   {passes}")
    lines.append(f"{'total (gradients: the largest role)':<44} {'':<9} {plan.total / GB:>8.2f}G")
    if plan.device_memory:
        lines.append(f"{'device memory':<44} {'':<9} {plan.device_memory / GB:>8.2f}G")
    return "\n".join(lines)
