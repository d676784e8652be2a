"""``python -m avdm.precompute data.csv=CSV data.video_dir=DIR [root=DIR] [model=...]``: write a latent cache.

Reads the OpenVid clips of ``data`` (:class:`~avdm.data.openvid_folder.OpenVidDataset`), encodes them with
the VAE and text encoder of ``conf/model/<model>.yaml`` and writes the latents and text embeddings to ``root``
(:mod:`avdm.data.latent_cache`); a rerun resumes. Train on it with ``data=latent_cache data.root=DIR``.
Errors in the user's config or files end the run with one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from avdm.hydra_entry import hydra_command

log = logging.getLogger("avdm.precompute")


def precompute(cfg: DictConfig) -> dict[str, Any]:
    """Build the teacher of ``cfg.model``, write (or complete) the cache at ``cfg.root``; return its index."""
    import torch

    from avdm.config import validate_command
    from avdm.data.latent_cache import skipped_counts, write_latent_cache
    from avdm.data.openvid_folder import OpenVidDataset
    from avdm.errors import AvdmUserError

    validate_command(
        cfg,
        scalars={"task_name": str, "seed": int, "root": str, "shard_size": int, "batch_size": int,
                 "dtype": Literal["float32", "bfloat16", "float16"], "device": str, "limit": int | None},
        calls={"data": OpenVidDataset},
    )  # fmt: skip

    for key in ("csv", "video_dir"):
        if OmegaConf.is_missing(cfg.data, key):
            raise AvdmUserError(f"data.{key}: not set; set data.csv=FILE.csv data.video_dir=MP4_FOLDER")
    data_args = OmegaConf.to_container(cfg.data, resolve=True)
    dataset = OpenVidDataset(**data_args)  # type: ignore[arg-type]
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    models = instantiate(cfg.model)
    models.vae.to(device).eval()
    models.prompt_encoder.to(device).eval()
    index = write_latent_cache(
        cfg.root,
        dataset,
        models,
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        limit=cfg.limit,
        model_config=OmegaConf.to_container(cfg.model, resolve=True),  # type: ignore[arg-type]
        dtype=cfg.dtype,
        on_shard=lambda e: log.info(
            "wrote %s (items %d-%d: %d clips, %d skipped)",
            e["file"],
            e["first"],
            e["end"] - 1,
            e["count"],
            len(e["skipped"]),
        ),
    )
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped_counts(index).items()))
    print(
        f"cached {index['num_clips']} clips in {cfg.root}; "
        f"skipped {index['num_skipped']} bad files" + (f" ({reasons})" if reasons else "")
    )
    return index


main = hydra_command(precompute, "precompute")


if __name__ == "__main__":
    main()
