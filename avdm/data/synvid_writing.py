"""Writing a SynVid root (:mod:`avdm.data.synvid` describes the layout): the teacher's sampler recorded
state by state, prompt shards sampled and written atomically, resumable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from avdm.config_schema import check_parameters
from avdm.data.shard_store import canonical, config_hash
from avdm.data.synvid import FORMAT, store
from avdm.errors import AvdmUserError
from avdm.models.bundle import ModelBundle
from avdm.models.denoiser import Denoiser
from avdm.models.pretrained import parse_dtype
from avdm.models.sampling import make_scheduler, sample_teacher


# --- recording the sampler ---------------------------------------------------------------------
class Trajectory(NamedTuple):
    """One batch of recorded sampler runs.

    Attributes:
        latents: the sampler's states ``(B, S + 1, C, F, H, W)``, noise first, final latent last.
        t: their normalized times ``(S + 1,)``, strictly decreasing, ending at 0.
    """

    latents: Tensor
    t: Tensor


@torch.no_grad()
def record_trajectory(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    z: Tensor,
    text: Tensor,
    uncond_text: Tensor | None = None,
    num_steps: int = 50,
    guidance_scale: float = 5.0,
    generator: torch.Generator | None = None,
) -> Trajectory:
    """:func:`~avdm.models.sampling.sample_teacher`, keeping every state of the sampler.

    It runs ``sample_teacher`` itself, so ``latents[:, -1]`` equals its output.
    Only schedulers whose state is the model's ``x_t`` qualify (flow-matching Euler, DDIM:
    ``init_noise_sigma == 1``); k-diffusion-style Euler keeps ``x_t / alpha_t`` and is rejected.

    Args:
        z: starting noise ``(B, C, F, H, W)``.
        text, uncond_text: text embeddings ``(B, L, D)``; ``uncond_text`` enables CFG.
        num_steps: scheduler steps ``S``.
        guidance_scale: standard-convention CFG scale.
    """
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        raise ValueError(
            f"{type(scheduler).__name__} keeps states that are not x_t (init_noise_sigma != 1); "
            "record trajectories with flow_euler or ddim"
        )
    states, times = [z], []

    def record(t: Tensor, x: Tensor) -> None:
        times.append(t[0].float().cpu())
        states.append(x)

    sample_teacher(
        denoiser, scheduler, z, text, uncond_text, num_steps, guidance_scale, generator, on_step=record
    )
    times.append(torch.zeros(()))
    return Trajectory(torch.stack(states, dim=1), torch.stack(times))


# --- writing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerSettings:
    """How the teacher is sampled; hashed with the teacher config into ``teacher_hash``.

    Attributes:
        scheduler: ``flow_euler`` (flow teachers) or ``ddim`` (see :func:`record_trajectory`).
        num_steps: sampler steps ``S`` (AccVideo: 50).
        guidance_scale: standard-convention CFG scale (1: no guidance).
        negative_prompt: the unconditional prompt of CFG.
        seed: the noise of prompt ``i`` comes from a generator seeded with ``noise_seed(seed, i)``.
    """

    scheduler: str = "flow_euler"
    num_steps: int = 50
    guidance_scale: float = 5.0
    negative_prompt: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        check_parameters(self, "sampler", num_steps=self.num_steps, guidance_scale=self.guidance_scale)


def noise_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s starting noise."""
    return seed * 1_000_003 + index


def teacher_hash(teacher_config: Mapping[str, Any], settings: SamplerSettings) -> str:
    """sha256 of the canonical JSON of the teacher config and the sampler settings."""
    return config_hash({"teacher": teacher_config, "sampler": asdict(settings)})


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file, one per line; blank lines are skipped, surrounding spaces stripped."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise AvdmUserError(f"prompt file '{file}' does not exist; set prompts=/path/to/prompts.txt")
    prompts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise AvdmUserError(f"prompt file '{file}' holds no prompts (one per line)")
    return prompts


def _shard_todo(root: Path, entry: dict[str, Any] | None, prompts: list[str]) -> bool:
    """Whether shard ``entry`` (``None``: not written) must be (re)written for ``prompts``."""
    if entry is None or not (root / entry["file"]).is_file():
        return True
    if entry["prompts"] == prompts:
        return False
    if prompts[: len(entry["prompts"])] == entry["prompts"]:
        return True  # the last shard was short and the prompt file has grown since
    changed = next(i for i, (a, b) in enumerate(zip(entry["prompts"], prompts)) if a != b)
    raise AvdmUserError(
        f"SynVid root '{root}': prompt {entry['first'] + changed} differs from the one already written "
        f"({entry['prompts'][changed]!r}); the prompt file changed: restore it or write to a new root"
    )


@torch.no_grad()
def _sample_shard(
    models: ModelBundle, prompts: list[str], first: int, settings: SamplerSettings, batch_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Trajectories ``(n, S+1, C, F, H, W)``, times ``(n, S+1)`` and text ``(n, L, D)`` of one shard."""
    teacher = models.video_teacher
    device = next(teacher.parameters()).device
    scheduler = make_scheduler(settings.scheduler, models.scheduler_config)
    uncond = models.prompt_encoder([settings.negative_prompt]).to(device)
    latents, times, texts = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        text = models.prompt_encoder(chunk).to(device)
        seeds = [noise_seed(settings.seed, i) for i in range(first + start, first + start + len(chunk))]
        z = torch.stack(
            [torch.randn(models.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        ).to(device)
        traj = record_trajectory(
            teacher,
            scheduler,
            z,
            text,
            uncond.expand(len(chunk), -1, -1),
            settings.num_steps,
            settings.guidance_scale,
        )
        latents.append(traj.latents.cpu())
        times.append(traj.t.expand(len(chunk), -1))
        texts.append(text.cpu())
    return torch.cat(latents), torch.cat(times), torch.cat(texts)


def _fresh_index(
    models: ModelBundle,
    settings: SamplerSettings,
    teacher_config: Mapping[str, Any],
    shard_size: int,
    dtype: str,
) -> dict[str, Any]:
    """The index of an empty SynVid root of this teacher, sampler and layout."""
    return {
        "format": FORMAT,
        "teacher_hash": teacher_hash(teacher_config, settings),
        "teacher": canonical(teacher_config),
        "sampler": canonical(asdict(settings)),
        "shard_size": shard_size,
        "dtype": dtype,
        "latent_shape": list(models.latent_shape),
        "num_steps": settings.num_steps,
        "num_trajectories": 0,
        "shards": [],
    }


def write_synvid(
    root: str | Path,
    prompts: Sequence[str],
    models: ModelBundle,
    settings: SamplerSettings,
    teacher_config: Mapping[str, Any],
    shard_size: int = 8,
    batch_size: int = 1,
    dtype: str = "float32",
    max_shards: int | None = None,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Sample the teacher on every prompt and write (or complete) a SynVid root; returns the index.

    Args:
        root: the SynVid folder (created if missing; resumed if it holds an index).
        prompts: one prompt per trajectory; prompt ``i`` lands in shard ``i // shard_size``.
        models: the teacher family, already on its device (``video_teacher``, ``prompt_encoder``,
            ``scheduler_config``, ``latent_shape``).
        settings: sampler settings (hashed with ``teacher_config``).
        teacher_config: what identifies the teacher (the composed ``model`` config), hashed.
        shard_size: trajectories per shard (K); fixed for a root.
        batch_size: prompts per sampler batch (never straddles shards; results are bit-identical for a
            given batch size).
        dtype: storage dtype of latents and text (``float32``, ``bfloat16``, ``float16``); times stay float32.
        max_shards: stop after writing this many new shards (``None``: all).
        on_shard: called with each shard's index entry once it is in the index.

    Raises:
        AvdmUserError: the root was written by another teacher / sampler / layout, or the prompts changed.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    if not prompts:
        raise ValueError("prompts must not be empty")
    store_dtype = parse_dtype(dtype)
    shards = store(root)
    shards.prepare()
    root = shards.root
    fresh = _fresh_index(models, settings, teacher_config, shard_size, dtype)
    index = shards.resume_index(fresh, {"teacher_hash": ("teacher", "sampler")}, ("shard_size", "dtype"))
    entries = {entry["id"]: entry for entry in index["shards"]}
    prompts = list(prompts)
    written = 0
    for shard_id in range((len(prompts) + shard_size - 1) // shard_size):
        if max_shards is not None and written >= max_shards:
            break
        first = shard_id * shard_size
        shard_prompts = prompts[first : first + shard_size]
        if not _shard_todo(root, entries.get(shard_id), shard_prompts):
            continue
        latents, times, text = _sample_shard(models, shard_prompts, first, settings, batch_size)
        tensors = {
            "latents": latents.to(store_dtype),
            "timesteps": times.float(),
            "text": text.to(store_dtype),
        }
        metadata = {
            "format": FORMAT,
            "teacher_hash": fresh["teacher_hash"],
            "first": str(first),
            "prompts": json.dumps(shard_prompts),
        }
        name = shards.write_shard(shard_id, tensors, metadata)
        entry = {
            "id": shard_id,
            "file": name,
            "first": first,
            "count": len(shard_prompts),
            "prompts": shard_prompts,
        }

        shards.record_shard(
            index, entries, entry, {"num_trajectories": lambda e: e["count"]},
            timesteps=times[0].tolist(), text_shape=list(text.shape[1:]),
        )  # fmt: skip
        written += 1
        if on_shard is not None:
            on_shard(entry)
    return index
