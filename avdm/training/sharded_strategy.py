"""``trainer=fsdp2``: Lightning's ``ModelParallelStrategy`` with avdm's checkpoint rules.

Kept beside Lightning's strategy (not instead of it) for three things it does not do:

* sharded checkpoints hold only what trains (``module.checkpoint_keys()``): the frozen teacher comes
  back from its source, as in every other avdm checkpoint. Lightning's loader asks torch's distributed
  checkpoint for every key of the model, so a checkpoint without the teacher would not load;
* a sharded checkpoint folder is written beside its target and renamed over it once every rank has
  written its shard, so a failed or killed save leaves the previous ``last.ckpt`` whole (what
  :class:`~avdm.training.checkpointing.storage.AtomicCheckpointIO` does for files);
* weights that are not finite are refused before any rank writes (one line, all ranks agree).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy

from avdm.training.checkpointing.storage import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    is_sharded_checkpoint,
    nonfinite_tensors,
    recover_renamed_checkpoint,
)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the complete folder ``tmp`` at ``path``: the old checkpoint is renamed aside first and removed
    last, so at every moment one of them is whole (:func:`recover_renamed_checkpoint` undoes a crash)."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.is_dir():
        path.rename(old)
    elif path.exists():
        path.unlink()
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 over all processes (``data_parallel_size``: the world size; no tensor parallelism).

    Args:
        save_distributed_checkpoint: one shard file per rank in a ``NAME.ckpt/`` folder (``True``), or
            one consolidated file written by rank 0 (``False``; it gathers every weight on rank 0).
        process_group_backend: ``nccl`` (GPUs) or ``gloo`` (CPU processes); ``None``: the device's default.
    """

    def __init__(
        self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )

    def setup_environment(self) -> None:
        # Lightning's "auto" means one data-parallel group per node and tensor parallelism inside it.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any = None
    ) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        bad = nonfinite_tensors(checkpoint.get("state_dict", {}))
        if self._any_rank(bool(bad)):
            raise CheckpointWriteError(
                f"refused to write {path}: non-finite weights ({bad[0] if bad else 'on another rank'}, ...); "
                f"{self._last_good_text()}"
            )
        tmp = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0:
            recover_renamed_checkpoint(path)  # a save killed between its two renames
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()
        error = None
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)  # every rank's shard, then meta.pt
        except OSError as err:  # rank 0 alone writes meta.pt: every rank must hear of its failure
            error = err
        if not self._any_rank(error is not None) and self.global_rank == 0:
            try:
                _swap_in(tmp, path)
            except OSError as err:
                error = err
        if self._any_rank(error is not None):
            reason = (error.strerror or str(error)) if error is not None else "on another rank"
            raise CheckpointWriteError(
                f"could not write checkpoint {path} ({reason}); {self._last_good_text()}"
            )
        if isinstance(self.checkpoint_io, AtomicCheckpointIO):
            self.checkpoint_io.last_good = path

    def _any_rank(self, flag: bool) -> bool:
        value = torch.tensor(float(flag), device=self.root_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _last_good_text(self) -> str:
        io = self.checkpoint_io
        return (
            io.good_checkpoint_text() if isinstance(io, AtomicCheckpointIO) else "no checkpoint was written"
        )

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only)  # a file: Lightning loads it (non-strict)
        from torch.distributed import checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        assert self.model is not None and self.lightning_module is not None
        keep = self.lightning_module.checkpoint_keys()
        state = {k: v for k, v in get_model_state_dict(self.model).items() if k in keep}
        optimizers = {
            f"optimizer_{idx}": get_optimizer_state_dict(self.model, optimizer)
            for idx, optimizer in enumerate(self.optimizers)
        }
        dcp.load({"state_dict": state, **optimizers}, checkpoint_id=path)  # one read plan for everything
        set_model_state_dict(self.model, state, options=StateDictOptions(strict=False))
        for idx, optimizer in enumerate(self.optimizers):
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=optimizers[f"optimizer_{idx}"])
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only, map_location="cpu")
