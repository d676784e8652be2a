"""Checkpoint files that are whole, finite and what they claim to be.

* :class:`AtomicCheckpointIO` (Lightning ``CheckpointIO`` plugin) writes ``NAME.ckpt`` to a temporary
  file in the same folder, fsyncs it and renames it over ``NAME.ckpt``: a full disk, a permission
  error or a kill mid-write leaves the previous file intact. Lightning's own writer opens the target
  itself (fsspec), so a failed write truncates it. It also refuses a checkpoint whose weights are not
  finite, so a poisoned run never overwrites a good file.
* :func:`read_checkpoint` loads a file for resume, sample, export and compare, and turns a truncated,
  foreign or empty file into one line naming it. A sharded checkpoint (a ``NAME.ckpt/`` folder of
  ``trainer=fsdp2``, one shard per rank) is consolidated into the same dictionary, or, for the cheap
  check before a resume (``shapes_only``), read from its metadata alone.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from avdm.errors import AvdmUserError


class CheckpointError(AvdmUserError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


class CheckpointWriteError(AvdmUserError):
    """A checkpoint could not be written (disk full, permissions) or holds non-finite weights."""


def nonfinite_tensors(state_dict: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding a NaN or an infinity (a sharded
    ``DTensor``: in this process's shard)."""
    from torch.distributed.tensor import DTensor

    bad = []
    for name, value in state_dict.items():
        if isinstance(value, DTensor):
            value = value.to_local()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad.append(name)
    return bad


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (torch distributed checkpoint + Lightning's
    ``meta.pt``)."""
    path = Path(path)
    return path.is_dir() and (path / "meta.pt").is_file() and (path / ".metadata").is_file()


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file in the same folder, fsync, then rename.

    The object is serialized in memory first (as Lightning's own writer does): written straight to a
    file, torch's zip writer reports a failed write as a ``RuntimeError`` without its cause, while a
    plain ``write`` raises the ``OSError`` (``ENOSPC``, ``EFBIG``, ``EACCES``) the user needs to see.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint writer: atomic on the run's own filesystem, never non-finite weights.

    ``last_good``: the last file this process wrote completely (``None`` before the first), so that
    a failure can say which checkpoint to resume from.
    """

    def __init__(self, resumed_from: str | Path | None = None) -> None:
        super().__init__()
        self.last_good: Path | None = Path(resumed_from) if resumed_from else None

    def good_checkpoint_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.last_good}"

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            total = len(checkpoint["state_dict"])
            raise CheckpointWriteError(
                f"refused to write {path}: {len(bad)} of {total} tensors are not finite ({bad[0]}, ...); "
                f"{self.good_checkpoint_text()}"
            )
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            raise CheckpointWriteError(
                f"could not write checkpoint {path} ({err.strerror or err}); {self.good_checkpoint_text()}"
            ) from None
        self.last_good = path


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU; one-line :class:`CheckpointError` when it is not one.

    ``mmap``: map the file instead of reading it (a cheap check before Lightning loads it again); for a
    sharded checkpoint folder, read only the stored shapes (``meta`` tensors).
    """
    path = Path(path)
    if path.is_dir():
        return _read_sharded_checkpoint(path, shapes_only=mmap)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (a write that did not finish?)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        detail = " ".join(str(err).split()).split(". ")[0][:120]
        raise CheckpointError(
            f"checkpoint {path} cannot be read: truncated or not a torch checkpoint "
            f"({type(err).__name__}: {detail})"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no 'state_dict')")
    return checkpoint


def recover_renamed_checkpoint(path: str | Path) -> bool:
    """Put back ``.NAME.old`` as ``NAME`` when a sharded save was killed between moving the old folder aside
    and renaming the new one in (``sharded_strategy.py``); returns whether ``NAME`` exists after it."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if path.exists() or not is_sharded_checkpoint(old):
        return path.exists()
    try:
        old.rename(path)
    except FileNotFoundError:  # another process of the same run put it back first
        pass
    return path.exists()


def _read_sharded_checkpoint(path: Path, shapes_only: bool) -> dict[str, Any]:
    """A sharded checkpoint folder as one Lightning checkpoint dictionary: full tensors, or (``shapes_only``)
    empty ``meta`` tensors of the stored shapes, read from the folder's metadata without the shards."""
    from torch.distributed.checkpoint.api import CheckpointException

    if not is_sharded_checkpoint(path):
        raise CheckpointError(
            f"checkpoint {path} is a folder but not a sharded checkpoint (no .metadata and meta.pt in it)"
        )
    try:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        reader = FileSystemReader(path)
        metadata = reader.read_metadata()
        files = {item.relative_path for item in metadata.storage_data.values()}
        missing = sorted(f for f in files if not (path / f).is_file())
        if missing:
            raise CheckpointError(f"sharded checkpoint {path} is incomplete: {', '.join(missing)} missing")
        extra = torch.load(path / "meta.pt", map_location="cpu", weights_only=False)
        if shapes_only:
            stored = metadata.state_dict_metadata
            state = {
                key.removeprefix("state_dict."): torch.empty(
                    meta.size, dtype=meta.properties.dtype, device="meta"
                )
                for key, meta in stored.items()
                if key.startswith("state_dict.") and isinstance(meta, TensorStorageMetadata)
            }
            return {**extra, "state_dict": state}
        # The weights only (not the optimizer moments), as full tensors in this process: what Lightning's
        # consolidation (`python -m lightning.pytorch.utilities.consolidate_checkpoint`) does with these
        # torch helpers, restricted to the weights' keys.
        from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        loaded: dict[str, Any] = {}
        planner = _EmptyStateDictLoadPlanner(keys={"state_dict"})
        _load_state_dict(loaded, storage_reader=reader, planner=planner, no_dist=True)
        checkpoint = {**extra, "state_dict": loaded.get("state_dict")}
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # a truncated shard (DCP's error is a BaseException),
        # foreign files
        detail = " ".join(str(err).split())[:160]
        raise CheckpointError(
            f"sharded checkpoint {path} cannot be read: a shard is truncated or foreign "
            f"({type(err).__name__}: {detail})"
        ) from None
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no 'state_dict')")
    return checkpoint


def check_fits(checkpoint: Mapping[str, Any], expected: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """The checkpoint's ``state_dict`` has exactly ``expected``'s keys and shapes (one line if not)."""
    found = checkpoint["state_dict"]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown weights (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint {path} does not fit the model of this config: {'; '.join(parts)} "
            "(a checkpoint of another model or loss setup?)"
        )
    for key, tensor in expected.items():
        value = found[key]
        if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path} does not fit the model of this config: {key} has shape "
                f"{list(value.shape)}, the model {list(tensor.shape)}"
            )


def read_fitting_checkpoint(module: Any, path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """:func:`read_checkpoint`, then the module's own ``on_load_checkpoint`` (avdm's modules put their
    frozen weights back, as checkpoints hold trainable weights only) and :func:`check_fits` against it."""
    checkpoint = read_checkpoint(path, mmap=mmap)
    if hasattr(module, "on_load_checkpoint"):
        module.on_load_checkpoint(checkpoint)
    check_fits(checkpoint, module.state_dict(), path)
    return checkpoint
