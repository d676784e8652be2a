"""Latent cache: real clips encoded once by the teacher's VAE and text encoder, read back for training.

A cache root is a folder laid out like SynVid's (:mod:`avdm.data.synvid`)::

    index.json                    what was written, from which data, by which model (below)
    shard-00000.safetensors       clips of dataset items [0, K)
    shard-00001.safetensors       clips of dataset items [K, 2K)
    ...

Shard ``j`` covers dataset items ``[j K, min((j + 1) K, end))`` (``K = shard_size``) and holds the
``n <= K`` of them that were readable, in item order, as tensors

* ``latents`` ``(n, C, F, H, W)``: :func:`~avdm.models.vae.encode_pixels` of the clip with ``sample=False``
  (the mode of the VAE's distribution, so a cache is deterministic), in the teacher's latent scale;
* ``text``    ``(n, L, D)``: the prompt encoder's embedding of the clip's caption;

and string metadata ``format``, ``model_hash``, ``first`` (the shard's first item), ``sources`` (JSON list of
the item index of each clip) and ``captions`` (JSON list).

``index.json`` holds ``format``, ``model_hash`` (sha256 of the model config), ``model``, ``source`` (what
the dataset was: class, length, clip settings), ``shard_size``, ``dtype``, ``latent_shape``, ``text_shape``,
``num_clips``, ``num_skipped`` and ``shards``: ``[{id, file, first, end, count, sources, skipped}]`` where
``end`` is the item the shard stops before and ``skipped`` lists ``{index, file, reason}`` of the items
whose video was bad (an :class:`~avdm.data.openvid_folder.OpenVidDataset` replaces a bad item by another draw;
the cache drops it instead, so every clip appears once).

Writes are atomic (temporary file + rename, shard first, index second) and a rerun skips the shards the
index lists as complete; a shard cut short by ``limit`` is rewritten whole when a later run goes further.
Items are read in the main process (an OpenVid item is the same in every run), batches never straddle
shards, so a resumed run writes exactly what an uninterrupted one does. One writer per root at a time.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset

from avdm.data.shard_store import ShardStore, canonical, config_hash
from avdm.data.stored_latents import StoredLatentDataModule
from avdm.errors import AvdmUserError
from avdm.models.bundle import ModelBundle
from avdm.models.pretrained import parse_dtype
from avdm.models.vae import encode_pixels

FORMAT = "avdm-latent-cache/1"
PRECOMPUTE_HINT = "write one with `python -m avdm.precompute data.csv=CSV data.video_dir=DIR root=ROOT`"
SOURCE_KEYS = ("num_frames", "stride", "resolution", "seed", "on_bad_video")


# --- describing what is cached -------------------------------------------------------------------
def model_hash(model_config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the model config (tuples as lists, ``3.0`` as ``3``)."""
    return config_hash(model_config)


def default_model_config(models: ModelBundle) -> dict[str, Any]:
    """What identifies the encoders when no config is given: weight sources, latent shape, VAE config."""
    vae_config = dict(getattr(models.vae, "config", {}) or {})
    return {"sources": models.sources, "latent_shape": list(models.latent_shape), "vae": vae_config}


def describe_source(dataset: Dataset) -> dict[str, Any]:
    """The dataset's class, length and clip settings (those of :data:`SOURCE_KEYS` it has), JSON-ready."""
    source: dict[str, Any] = {"type": type(dataset).__name__, "length": len(dataset)}  # type: ignore[arg-type]
    if hasattr(dataset, "video_dir"):
        source["video_dir"] = str(Path(dataset.video_dir).expanduser().resolve())
    source.update({key: getattr(dataset, key) for key in SOURCE_KEYS if hasattr(dataset, key)})
    return canonical(source)


def bad_item(dataset: Dataset, index: int) -> tuple[str, str] | None:
    """``(file, reason)`` when item ``index``'s own video was found bad (after reading the item), else None.

    Datasets that replace bad items (:class:`~avdm.data.openvid_folder.OpenVidDataset`) say so through
    ``bad_reason(index)`` and name their files in ``videos``; other datasets have no bad items.
    """
    reason = dataset.bad_reason(index) if hasattr(dataset, "bad_reason") else None
    if reason is None:
        return None
    names = getattr(dataset, "videos", None)
    return (names[index] if names is not None else str(index)), reason


# --- writing -------------------------------------------------------------------------------------
def store(root: str | Path) -> ShardStore:
    """The shard store of a latent cache root."""
    return ShardStore(
        Path(root).expanduser(), FORMAT, "latent cache", "latent cache", "a cache", PRECOMPUTE_HINT
    )


@torch.no_grad()
def _encode_shard(
    dataset: Dataset, models: ModelBundle, start: int, end: int, batch_size: int
) -> tuple[list[int], list[str], list[Tensor], list[Tensor], list[dict[str, Any]]]:
    """Read items ``[start, end)``; returns kept item indices, captions, latent and text batches, skips."""
    device = next(models.vae.parameters()).device  # type: ignore[union-attr]
    sources: list[int] = []
    captions: list[str] = []
    latents: list[Tensor] = []
    texts: list[Tensor] = []
    skipped: list[dict[str, Any]] = []
    pixels: list[Tensor] = []

    def flush() -> None:
        if pixels:
            chunk = captions[len(captions) - len(pixels) :]
            latents.append(encode_pixels(models.vae, torch.stack(pixels).to(device), sample=False).cpu())
            texts.append(models.prompt_encoder(chunk).float().cpu())
            pixels.clear()

    for i in range(start, end):
        item = dataset[i]
        bad = bad_item(dataset, i)
        if bad is not None:
            skipped.append({"index": i, "file": bad[0], "reason": bad[1]})
            continue
        sources.append(i)
        captions.append(str(item["captions"]))
        pixels.append(item["pixels"])
        if len(pixels) == batch_size:
            flush()
    flush()
    return sources, captions, latents, texts, skipped


# The index's counts over every shard it lists.
CACHE_TOTALS = {"num_clips": lambda e: e["count"], "num_skipped": lambda e: len(e["skipped"])}


def _fresh_index(
    models: ModelBundle,
    dataset: Dataset,
    config: dict[str, Any],
    source: Mapping[str, Any] | None,
    shard_size: int,
    dtype: str,
) -> dict[str, Any]:
    """The index of an empty cache of this model, data source and layout."""
    return {
        "format": FORMAT,
        "model_hash": model_hash(config),
        "model": canonical(config),
        "source": canonical(dict(source)) if source is not None else describe_source(dataset),
        "shard_size": shard_size,
        "dtype": dtype,
        "latent_shape": list(models.latent_shape),
        "text_shape": list(models.prompt_encoder([""]).shape[1:]),
        "num_clips": 0,
        "num_skipped": 0,
        "shards": [],
    }


def _shard_tensors(
    latents: list[Tensor], texts: list[Tensor], fresh: Mapping[str, Any], store_dtype: torch.dtype
) -> dict[str, Tensor]:
    """One shard's ``latents (n, C, F, H, W)`` and ``text (n, L, D)`` in the storage dtype; refuses clips
    whose latents do not have the model's shape."""
    latent = torch.cat(latents) if latents else torch.empty(0, *fresh["latent_shape"])
    text = torch.cat(texts) if texts else torch.empty(0, *fresh["text_shape"])
    if list(latent.shape[1:]) != fresh["latent_shape"]:
        raise AvdmUserError(
            f"clips encode to latents {list(latent.shape[1:])} but the model's are "
            f"{fresh['latent_shape']}; "
            "match data.num_frames / data.resolution to model.num_frames / model.resolution"
        )
    return {"latents": latent.to(store_dtype).contiguous(), "text": text.to(store_dtype).contiguous()}


def write_latent_cache(
    root: str | Path,
    dataset: Dataset,
    models: ModelBundle,
    shard_size: int = 64,
    batch_size: int = 4,
    limit: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    on_shard: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Encode the dataset's clips and captions and write (or complete) a latent cache; returns the index.

    Args:
        root: the cache folder (created if missing; resumed if it holds an index).
        dataset: map-style, items ``{"pixels": (3, F, H, W) in [-1, 1], "captions": str}`` (e.g.
            :class:`~avdm.data.openvid_folder.OpenVidDataset`); item ``i`` lands in shard ``i // shard_size``.
        models: the teacher family, on its device (``vae``, ``prompt_encoder``, ``latent_shape``).
        shard_size: dataset items per shard (K); fixed for a root.
        batch_size: clips per VAE / text-encoder batch (never straddles shards).
        limit: cover only items ``[0, limit)`` (None: all); a later run with a larger limit continues.
        model_config: what identifies the encoders (the composed ``model`` config), hashed into
            ``model_hash``; default :func:`default_model_config`.
        source: what identifies the data; default :func:`describe_source`.
        dtype: storage dtype of latents and text (``float32``, ``bfloat16``, ``float16``).
        on_shard: called with each new shard's index entry once it is in the index.

    Raises:
        AvdmUserError: the root was written from another model, source or layout, or the clips do not
            encode to the model's latent shape.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    if models.vae is None:
        raise AvdmUserError("the model has no VAE to encode clips with; pick a model config with a VAE")
    store_dtype = parse_dtype(dtype)
    end = len(dataset) if limit is None else min(int(limit), len(dataset))  # type: ignore[arg-type]
    shards = store(root)
    shards.prepare()
    root = shards.root
    config = dict(model_config) if model_config is not None else default_model_config(models)
    fresh = _fresh_index(models, dataset, config, source, shard_size, dtype)
    identity = {"model_hash": ("model",), "source": ("source",)}
    index = shards.resume_index(fresh, identity, ("shard_size", "dtype", "latent_shape", "text_shape"))
    entries = {entry["id"]: entry for entry in index["shards"]}
    for shard_id in range((end + shard_size - 1) // shard_size):
        first = shard_id * shard_size
        shard_end = min(first + shard_size, end)
        done = entries.get(shard_id)
        if done is not None and done["end"] >= shard_end and (root / done["file"]).is_file():
            continue
        sources, captions, latents, texts, skipped = _encode_shard(
            dataset, models, first, shard_end, batch_size
        )
        tensors = _shard_tensors(latents, texts, fresh, store_dtype)
        metadata = {
            "format": FORMAT,
            "model_hash": fresh["model_hash"],
            "first": str(first),
            "sources": json.dumps(sources),
            "captions": json.dumps(captions),
        }
        name = shards.write_shard(shard_id, tensors, metadata)
        entry = {
            "id": shard_id,
            "file": name,
            "first": first,
            "end": shard_end,
            "count": len(sources),
            "sources": sources,
            "skipped": skipped,
        }
        shards.record_shard(index, entries, entry, CACHE_TOTALS)
        if on_shard is not None:
            on_shard(entry)
    return index


def skipped_counts(index: Mapping[str, Any]) -> dict[str, int]:
    """Skipped (bad) items of a cache index per reason."""
    return dict(Counter(s["reason"] for e in index["shards"] for s in e["skipped"]))


# --- reading -------------------------------------------------------------------------------------
def read_index(root: str | Path) -> dict[str, Any]:
    """The ``index.json`` of a latent cache root that holds at least one clip."""
    shards = store(root)
    index = shards.read_index()
    if not index["num_clips"]:
        raise AvdmUserError(f"latent cache '{shards.root}' holds no clip yet; {PRECOMPUTE_HINT}")
    return index


class LatentCacheDataset(Dataset):
    """Map-style view of a latent cache; item ``i`` is the ``i``-th cached clip (over all shards, in order).

    Items: ``latents (C, F, H, W)`` and ``text (L, D)`` (float32), ``captions`` (str).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.index = read_index(self.root)
        self.shards = [s for s in self.index["shards"] if s["count"]]
        self._firsts: list[int] = []
        total = 0
        for shard in self.shards:
            self._firsts.append(total)
            total += shard["count"]
        self._len = total

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.index["latent_shape"])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"latent cache index {index} out of range [0, {len(self)})")
        k = bisect.bisect_right(self._firsts, index) - 1
        offset = index - self._firsts[k]
        with safe_open(str(self.root / self.shards[k]["file"]), framework="pt") as f:
            latents = f.get_slice("latents")[offset]
            text = f.get_slice("text")[offset]
            caption = json.loads(f.metadata()["captions"])[offset]
        return {"latents": latents.float(), "text": text.float(), "captions": caption}


class LatentCacheDataModule(StoredLatentDataModule):
    """Batches of cached clips: ``latents (B, C, F, H, W)``, ``text (B, L, D)``, ``captions list[str]``.

    Args:
        root: the cache folder (written by ``python -m avdm.precompute``).
        batch_size, num_workers: per rank.
        seed: seed of the per-epoch shuffles.
    """

    what = "clips"
    mismatch_hint = "use a cache written with this model config"

    def __init__(self, root: str, batch_size: int = 2, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.dataset = LatentCacheDataset(root)
        self._configure(batch_size, num_workers, seed)
