"""``python -m avdm.synthesize prompts=FILE [root=DIR] [model=wan_pretrained] ...``: write SynVid.

Samples the teacher of ``conf/model/<model>.yaml`` on every prompt of ``prompts`` and writes the whole
trajectories to ``root`` (:mod:`avdm.data.synvid`); a rerun resumes. Errors in the user's config or files
end the run with one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from avdm.hydra_entry import hydra_command

log = logging.getLogger("avdm.synthesize")


def synthesize(cfg: DictConfig) -> dict[str, Any]:
    """Build the teacher from ``cfg.model`` and write (or complete) the SynVid root; returns its index."""
    import torch

    from avdm.config import validate_command
    from avdm.data.synvid_writing import SamplerSettings, read_prompts, write_synvid
    from avdm.errors import AvdmUserError

    validate_command(
        cfg,
        scalars={
            "task_name": str,
            "seed": int,
            "prompts": str,
            "root": str,
            "shard_size": int,
            "batch_size": int,
            "dtype": Literal["float32", "bfloat16", "float16"],
            "device": str,
            "max_shards": int | None,
        },  # fmt: skip
        calls={"sampler": SamplerSettings},
    )

    if OmegaConf.is_missing(cfg, "prompts"):
        raise AvdmUserError("prompts: no prompt file given; set prompts=/path/to/prompts.txt (one per line)")
    prompts = read_prompts(cfg.prompts)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    models = instantiate(cfg.model)
    models.video_teacher.to(device).eval()
    models.prompt_encoder.to(device).eval()
    settings = SamplerSettings(**OmegaConf.to_container(cfg.sampler, resolve=True))
    index = write_synvid(
        cfg.root,
        prompts,
        models,
        settings,
        OmegaConf.to_container(cfg.model, resolve=True),
        shard_size=cfg.shard_size,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        max_shards=cfg.max_shards,
        on_shard=lambda e: log.info(
            "wrote %s (prompts %d-%d)", e["file"], e["first"], e["first"] + e["count"] - 1
        ),
    )
    log.info("SynVid root %s holds %d of %d trajectories", cfg.root, index["num_trajectories"], len(prompts))
    return index


main = hydra_command(synthesize, "synthesize")


if __name__ == "__main__":
    main()
