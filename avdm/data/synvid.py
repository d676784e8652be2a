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
resumed run writes exactly what an uninterrupted one does. One writer per root at a time. Writing is
:mod:`avdm.data.synvid_writing`; this module reads.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset

from avdm.data.shard_store import ShardStore
from avdm.data.stored_latents import StoredLatentDataModule
from avdm.errors import AvdmUserError, ConfigError
from avdm.models.generator import FewStepGenerator

FORMAT = "avdm-synvid/1"
SYNTHESIZE_HINT = "write one with `python -m avdm.synthesize prompts=FILE root=ROOT`"


def store(root: str | Path) -> ShardStore:
    """The shard store of a SynVid root."""
    return ShardStore(
        Path(root).expanduser(), FORMAT, "SynVid", "SynVid root", "a SynVid folder", SYNTHESIZE_HINT
    )


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
