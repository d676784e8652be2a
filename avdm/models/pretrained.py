"""Loading weights from a hub id or a local diffusers folder, with a one-sentence failure; weight dtypes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from avdm.errors import MissingWeightsError

T = TypeVar("T")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_pretrained(what: str, config_key: str, loader: Callable[..., T], source: str, **kwargs: Any) -> T:
    """``loader(source, **kwargs)`` (a diffusers / transformers ``from_pretrained``), or one clear error.

    Raises:
        MissingWeightsError: naming ``what`` is missing and the ``config_key`` to point at a local copy.
    """
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") > 1  # hub ids are "owner/name"
    if looks_local and not Path(source).expanduser().exists():
        raise MissingWeightsError(
            f"Missing {what}: the local path '{source}' does not exist; "
            f"set {config_key}=/path/to/a/local/copy."
        )
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as err:  # hub errors derive from OSError / ValueError
        hint = "" if os.environ.get("HF_HUB_OFFLINE") != "1" else " (HF_HUB_OFFLINE=1)"
        raise MissingWeightsError(
            f"Missing {what}: '{source}' is not a local directory and could not be loaded from the "
            f"Hugging Face hub or its cache{hint}; download it and set {config_key}=/path/to/a/local/copy."
        ) from err


def subfolder_config(folder: str, subfolder: str) -> dict[str, Any] | None:
    """The ``config.json`` of ``folder/subfolder`` when it is a local folder, else ``None`` (a hub id)."""
    path = Path(folder).expanduser() / subfolder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None
