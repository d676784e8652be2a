"""Data modules: OpenVid clips (CSV + mp4 folder, or tar shards), cached latents, SynVid trajectories,
synthetic latents.

Names are imported on first use, so light tools (``python -m avdm.data.check``) do not pay for Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SyntheticLatentDataModule": "avdm.data.synthetic_latents",
    "SyntheticLatentDataset": "avdm.data.synthetic_latents",
    "OpenVidDataModule": "avdm.data.openvid",
    "OpenVidDataset": "avdm.data.openvid_folder",
    "OpenVidShardDataset": "avdm.data.openvid_shards",
    "LatentCacheDataModule": "avdm.data.latent_cache",
    "LatentCacheDataset": "avdm.data.latent_cache",
    "SynVidDataModule": "avdm.data.synvid",
    "SynVidDataset": "avdm.data.synvid",
    "ResumableDataLoader": "avdm.data.resumable",
    "write_shapes_dataset": "avdm.data.shapes",
    "BadVideoError": "avdm.data.video_io",
    "read_clip": "avdm.data.video_io",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'avdm.data' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
