"""A shard store: a folder of safetensors shards and the ``index.json`` that lists the finished ones.

SynVid (:mod:`avdm.data.synvid`, teacher trajectories) and the latent cache (:mod:`avdm.data.latent_cache`,
encoded clips) are both shard stores; this module is what they share:

* what wrote a store is recorded in its index as canonical JSON (:func:`canonical`), hashed
  (:func:`config_hash`), and checked on resume (:meth:`ShardStore.check_resume`: one line naming what
  differs, :func:`differences`);
* every write is atomic (:func:`atomic_write`: a temporary file renamed into place, shard first and index
  second), so a killed writer leaves an index that lists only complete shards, and its temporary files
  are removed by the next writer (:meth:`ShardStore.prepare`).

What a shard holds, how shards map to items and when one must be rewritten stay with each store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from avdm.errors import AvdmUserError

INDEX = "index.json"


def canonical(value: Any) -> Any:
    """JSON-ready copy in which tuples are lists and integral floats are ints (``shift: 3`` == ``3.0``)."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def config_hash(value: Any) -> str:
    """sha256 of the canonical JSON of ``value`` (keys sorted)."""
    return hashlib.sha256(json.dumps(canonical(value), sort_keys=True).encode()).hexdigest()


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``"a.b: old -> new"`` for every leaf where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d for k in sorted(set(old) | set(new)) for d in differences(old.get(k), new.get(k), f"{key}.{k}")
        ]
    return [] if old == new else [f"{key.lstrip('.')}: {old!r} -> {new!r}"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` on a temporary file beside ``path``, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardStore:
    """One store folder.

    Attributes:
        root: the folder.
        format: the index's ``format`` string (e.g. ``avdm-synvid/1``).
        kind: what the index is called in messages (``SynVid``, ``latent cache``).
        name: what the folder is called in messages (``SynVid root``, ``latent cache``).
        folder: what ``data.root`` should name (``a SynVid folder``, ``a cache``).
        hint: the command that writes one.
    """

    root: Path
    format: str
    kind: str
    name: str
    folder: str
    hint: str

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    # --- writing ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder and remove temporary files a killed writer left."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*.tmp-*"):
            stale.unlink()

    def resume_index(self, fresh: dict[str, Any], identity: Mapping[str, Sequence[str]],
                     layout: Sequence[str]) -> dict[str, Any]:  # fmt: skip
        """The index to continue: the one on disk once :meth:`check_resume` accepts it, else ``fresh``."""
        if not self.index_path.is_file():
            return fresh
        index = json.loads(self.index_path.read_text())
        self.check_resume(index, fresh, identity, layout)
        return index

    def check_resume(self, index: Mapping[str, Any], fresh: Mapping[str, Any],
                     identity: Mapping[str, Sequence[str]], layout: Sequence[str]) -> None:  # fmt: skip
        """Refuse to continue a store written by something else.

        Args:
            index: the index on disk; fresh: the one this run would write.
            identity: index keys that identify the writer (a hash or a description), each with the
                described fields whose differences the message names.
            layout: keys whose value fixes the layout of the shards (``shard_size``, ``dtype``, ...).
        """
        if index.get("format") != self.format:
            raise AvdmUserError(f"'{self.index_path}' is not a {self.kind} index of format {self.format}")
        for key, fields in identity.items():
            if index.get(key) != fresh[key]:
                diff = differences({f: index.get(f) for f in fields}, {f: fresh[f] for f in fields})
                raise AvdmUserError(
                    f"{self.name} '{self.root}' was written from a different {' or '.join(fields)} "
                    f"({'; '.join(diff[:3]) or 'see index.json'}); "
                    "resume with the original settings or write to a new root"
                )
        for key in layout:
            if index.get(key) != fresh[key]:
                raise AvdmUserError(
                    f"{self.name} '{self.root}' was written with {key}={index.get(key)}, not {fresh[key]}; "
                    f"resume with {key}={index.get(key)} or write to a new root"
                )

    def write_shard(self, shard_id: int, tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
        """Write ``shard-NNNNN.safetensors`` atomically; returns its file name."""
        name = f"shard-{shard_id:05d}.safetensors"
        atomic_write(self.root / name, lambda p: save_file(tensors, str(p), metadata=metadata))
        return name

    def write_index(self, index: Mapping[str, Any]) -> None:
        """Rewrite ``index.json`` atomically (after the shards it lists are on disk)."""
        atomic_write(self.index_path, lambda p: p.write_text(json.dumps(index, indent=1)))

    def record_shard(
        self,
        index: dict[str, Any],
        entries: dict[int, dict[str, Any]],
        entry: dict[str, Any],
        totals: Mapping[str, Callable[[Mapping[str, Any]], int]],
        **values: Any,
    ) -> None:
        """Add a written shard's ``entry`` to ``entries`` and to the index's shard list (in id order), set
        each of ``totals`` to its sum over every listed shard and each of ``values`` as it is, and rewrite
        the index."""
        entries[entry["id"]] = entry
        index["shards"] = [entries[i] for i in sorted(entries)]
        index.update({key: sum(count(e) for e in index["shards"]) for key, count in totals.items()}, **values)
        self.write_index(index)

    # --- reading ---------------------------------------------------------------------------------
    def read_index(self) -> dict[str, Any]:
        """The index on disk, of this store's format (one line if missing or of another format)."""
        path = self.index_path
        if not path.is_file():
            raise AvdmUserError(
                f"no {self.kind} index at '{path}'; set data.root to {self.folder} or {self.hint}"
            )
        index = json.loads(path.read_text())
        if index.get("format") != self.format:
            raise AvdmUserError(f"'{path}' is not a {self.kind} index of format {self.format}")
        return index
