"""What a distillation checkpoint holds: every state-dict entry but the frozen roles' (teachers, prompt
encoder, VAE) and their aliases, which come back from the teacher's sources when the run is rebuilt."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from avdm.training.sharding import storage_key

FROZEN_PREFIXES = ("teachers.", "prompt_encoder.", "vae.")


def frozen_keys(state: Mapping[str, Tensor]) -> list[str]:
    """Keys of the frozen roles, and of every other entry that is one of their tensors (the base weights a
    LoRA generator or fake score runs on); LoRA adapters inside the frozen roles train, so they are kept."""
    frozen = [k for k in state if k.startswith(FROZEN_PREFIXES) and "lora_" not in k]
    storages = {storage_key(state[k]) for k in frozen}
    shared = [k for k in state if k not in frozen and storage_key(state[k]) in storages]
    return frozen + shared


def trainable_keys(state: Mapping[str, Tensor]) -> set[str]:
    """The keys of ``state`` (a module's own state dict, whose aliases share storage) a checkpoint holds."""
    frozen = set(frozen_keys(state))
    return {k for k in state if k not in frozen}
