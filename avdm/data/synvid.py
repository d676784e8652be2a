"""SynVid (AccVideo Sec. 3.1): the teacher's whole denoising trajectories on disk, key points chosen at load.

A SynVid root is a folder::

    index.json                    what was written, by which teacher and sampler (below)
    shard-00000.safetensors       trajectories of prompts [0, K)
    shard-00001.safetensors       trajectories of prompts [K, 2K)
    ...

Shard ``j`` holds the ``n <= K`` trajectories of prompts ``[j K, j K + n)`` (``K = shard_size``) as tensors

* ``latents``   ``(n, S + 1, C, F, H, W)``: the sampler's states from noise to data: ``[:, 0]`` is the
  starting noise ``z``, ``[:, s]`` the latent after ``s`` of the ``S`` sampler steps, ``[:, S]`` the
  final latent;
* ``timesteps`` ``(n, S + 1)`` float32: the normalized time ``t`` of each state (the teacher schedule's
  ``t_from_timestep`` of the scheduler's timesteps, then 0 for the final latent), strictly decreasing;
* ``text``      ``(n, L, D)``: the conditional text embedding of each prompt;

and string metadata ``format``, ``teacher_hash``, ``first`` (the first prompt index), ``prompts`` (JSON list).

``index.json`` holds ``format``, ``teacher_hash`` (sha256 of the teacher config and sampler settings),
``teacher``, ``sampler``, ``shard_size``, ``dtype``, ``latent_shape``, ``text_shape``, ``num_steps``,
``timesteps`` (S + 1), ``num_trajectories`` and ``shards``: ``[{id, file, first, count, prompts}]``.

Writes are atomic: a shard is written to a temporary file and renamed, then the index is rewritten the
same way, so a killed run leaves an index that lists only complete shards; a rerun skips them. The noise of
prompt ``i`` is drawn from its own generator seeded by ``(seed, i)``, and batches never straddle shards, so a
resumed run writes exactly what an uninterrupted one does. One writer per root at a time.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset

from avdm.data.shard_store import INDEX, ShardStore, canonical, config_hash  # noqa: F401 (INDEX re-exported)
from avdm.data.stored_latents import StoredLatentDataModule
from avdm.errors import AvdmUserError, ConfigError
from avdm.models.bundle import ModelBundle
from avdm.models.pretrained import parse_dtype
from avdm.models.denoiser import Denoiser
from avdm.models.generator import FewStepGenerator
from avdm.models.sampling import make_scheduler, sample_teacher

FORMAT = "avdm-synvid/1"
SYNTHESIZE_HINT = "write one with `python -m avdm.synthesize prompts=FILE root=ROOT`"


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


def store(root: str | Path) -> ShardStore:
    """The shard store of a SynVid root."""
    return ShardStore(
        Path(root).expanduser(), FORMAT, "SynVid", "SynVid root", "a SynVid folder", SYNTHESIZE_HINT
    )


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
    fresh = {
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
        entries[shard_id] = {
            "id": shard_id,
            "file": name,
            "first": first,
            "count": len(shard_prompts),
            "prompts": shard_prompts,
        }
        index["shards"] = [entries[i] for i in sorted(entries)]
        index["num_trajectories"] = sum(e["count"] for e in index["shards"])
        index["timesteps"] = times[0].tolist()
        index["text_shape"] = list(text.shape[1:])
        shards.write_index(index)
        written += 1
        if on_shard is not None:
            on_shard(entries[shard_id])
    return index


# --- reading -------------------------------------------------------------------------------------
def read_index(root: str | Path) -> dict[str, Any]:
    """The ``index.json`` of a SynVid root."""
    shards = store(root)
    index = shards.read_index()
    if not index["shards"]:
        raise AvdmUserError(f"SynVid root '{shards.root}' holds no finished shard yet; {SYNTHESIZE_HINT}")
    return index


def select_key_steps(
    num_steps: int, num_key_points: int | None = None, key_steps: Sequence[int] | None = None
) -> list[int]:
    """Indices into a stored trajectory of ``num_steps + 1`` states.

    Args:
        num_steps: sampler steps ``S`` of the stored trajectories.
        num_key_points: ``N`` evenly spaced states from the noise (0) to the final latent (S),
            ``round(linspace(0, S, N))``; AccVideo's 5 student steps over a 50-step teacher: ``N = 6``
            gives ``0, 10, ..., 50``.
        key_steps: explicit strictly increasing indices in ``[0, S]`` (at least 2).

    Returns:
        The chosen indices; every state (``0 .. S``) when neither argument is given.
    """
    if num_key_points is not None and key_steps is not None:
        raise ConfigError("data.num_key_points and data.key_steps are exclusive; set one of them")
    if key_steps is not None:
        steps = [int(s) for s in key_steps]
        if len(steps) < 2 or steps != sorted(set(steps)) or steps[0] < 0 or steps[-1] > num_steps:
            raise ConfigError(
                f"data.key_steps must be >= 2 strictly increasing step indices in [0, {num_steps}], "
                f"got {steps}"
            )
        return steps
    if num_key_points is None:
        return list(range(num_steps + 1))
    if not 2 <= num_key_points <= num_steps + 1:
        raise ConfigError(f"data.num_key_points must be in [2, {num_steps + 1}], got {num_key_points}")
    return [round(i * num_steps / (num_key_points - 1)) for i in range(num_key_points)]


class SynVidDataset(Dataset):
    """Map-style view of a SynVid root; item ``i`` is prompt ``i``'s trajectory at the key steps.

    Items: ``trajectory (N, C, F, H, W)`` and ``trajectory_t (N,)`` (float32, noise -> data), ``text (L, D)``
    (float32), ``captions`` (the prompt).

    Args:
        root: the SynVid folder.
        num_key_points, key_steps: see :func:`select_key_steps` (default: every stored state).
    """

    def __init__(
        self, root: str | Path, num_key_points: int | None = None, key_steps: Sequence[int] | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        self.index = read_index(self.root)
        self.key_steps = select_key_steps(self.index["num_steps"], num_key_points, key_steps)
        self.shards = self.index["shards"]
        self._firsts = [s["first"] for s in self.shards]
        size = self.index["shard_size"]
        short = [s["id"] for s in self.shards[:-1] if s["count"] != size]
        if self._firsts != list(range(0, len(self.shards) * size, size)) or short:
            raise AvdmUserError(
                f"SynVid root '{self.root}' is incomplete (shards {[s['id'] for s in self.shards]}); "
                f"finish it with `python -m avdm.synthesize` on the same prompts"
            )

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.index["latent_shape"])

    @property
    def key_times(self) -> Tensor:
        """Normalized times of the key steps ``(N,)`` (the same for every trajectory of a root)."""
        return torch.tensor(self.index["timesteps"])[self.key_steps]

    def __len__(self) -> int:
        return self.index["num_trajectories"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"SynVid index {index} out of range [0, {len(self)})")
        shard = self.shards[bisect.bisect_right(self._firsts, index) - 1]
        offset = index - shard["first"]
        with safe_open(str(self.root / shard["file"]), framework="pt") as f:
            latents = f.get_slice("latents")
            trajectory = torch.stack([latents[offset, s] for s in self.key_steps])
            times = f.get_slice("timesteps")[offset][self.key_steps]
            text = f.get_slice("text")[offset]
        return {
            "trajectory": trajectory.float(),
            "trajectory_t": times.float(),
            "text": text.float(),
            "captions": shard["prompts"][offset],
        }


class SynVidDataModule(StoredLatentDataModule):
    """Batches of SynVid key points for AccVideo's losses (:mod:`avdm.losses.trajectory`).

    Batch: ``trajectory (B, N, C, F, H, W)``, ``trajectory_t (B, N)``, ``text (B, L, D)``,
    ``captions list[str]``.

    Args:
        root: the SynVid folder (written by ``python -m avdm.synthesize``).
        num_key_points, key_steps: key points taken from the stored trajectories (:func:`select_key_steps`);
            default every stored state.
        batch_size, num_workers: per rank.
        seed: seed of the per-epoch shuffles.
    """

    what = "trajectories"
    mismatch_hint = "match model.num_frames / model.resolution to the data"

    def __init__(
        self,
        root: str,
        num_key_points: int | None = None,
        key_steps: Sequence[int] | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = SynVidDataset(root, num_key_points, list(key_steps) if key_steps is not None else None)
        self._configure(batch_size, num_workers, seed)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        generator = getattr(self.trainer.lightning_module if self.trainer else None, "generator", None)
        if generator is not None:
            check_ladder(generator, self.dataset)


def check_ladder(generator: FewStepGenerator, dataset: SynVidDataset) -> None:
    """Refuse a student ladder that differs from the times of the SynVid key points it learns from.

    The student steps from key point ``k`` to ``k + 1`` at the key times ``t_0 > ... > t_{N-2}`` (the last
    key point is its output); sampled at other times it would see inputs it never trained on.

    Raises:
        ConfigError: naming both ladders and the ``module.generator_timesteps`` that matches the data.
    """
    key_t = [float(t) for t in dataset.key_times[:-1]]
    t_values = generator.t_values
    if len(key_t) == len(t_values) and all(abs(a - b) < 1e-4 for a, b in zip(key_t, t_values)):
        return
    wanted = [round(float(generator.denoiser.schedule.timestep(torch.tensor(t))), 3) for t in key_t]
    ladder = [round(s, 3) for s in generator.timesteps]
    raise ConfigError(
        f"module.generator_timesteps={ladder} differ from the key points of "
        f"'{dataset.root}' (key steps {dataset.key_steps} of {dataset.index['num_steps']}, "
        f"timesteps {wanted}): "
        f"the student would be sampled at times it never trained on; set module.generator_timesteps={wanted}"
    )
