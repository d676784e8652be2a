"""``python -m avdm.sample CKPT --prompts P [P ...]``: videos from a trained student (or its teacher).

Student: ``--steps`` of the generator's ladder (default all). Teacher: ``--teacher`` with its own sampler
(DDIM 25 steps for AnimateDiff, ``flow_euler`` 50 steps for flow transformers; ``--scheduler``, ``--steps``)
and ``--guidance 7.5``. Writes one mp4 per prompt and ``grid.mp4`` to ``--out``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import Tensor

from avdm.data.visualize import video_grid, write_mp4
from avdm.errors import ConfigError, report_user_errors
from avdm.models.sampling import SCHEDULERS, latents_for_prompts, teacher_sampler
from avdm.models.vae import decode_latents
from avdm.training.checkpointing.run_loading import LoadedRun, load_run


def slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe form of ``prompt``."""
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:limit] or "prompt"


def teacher_latents(
    run: LoadedRun, prompts: list[str], seed: int, steps: int, scheduler: str, guidance: float
) -> Tensor:
    """Latents ``(B, C, F, H, W)`` of the run's frozen video teacher with a diffusers scheduler and CFG."""
    module = run.module
    sampler = teacher_sampler(module.teachers.video, run.bundle.scheduler_config, scheduler, steps, guidance)
    return latents_for_prompts(
        sampler, module.prompt_encoder, prompts, module.latent_shape, seed, guided=guidance != 1.0
    )


def write_videos(
    latents: Tensor, vae: torch.nn.Module, prompts: list[str], out: Path, fps: int
) -> list[Path]:
    """Decode ``(B, C, F, h, w)`` latents and write ``NN_<prompt>.mp4`` per prompt plus ``grid.mp4``."""
    videos = decode_latents(vae, latents)
    paths = [
        write_mp4(out / f"{i:02d}_{slug(p)}.mp4", video_grid(videos[i : i + 1]), fps)
        for i, p in enumerate(prompts)
    ]
    return [*paths, write_mp4(out / "grid.mp4", video_grid(videos), fps)]


@report_user_errors
def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m avdm.sample", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="<run>/checkpoints/NAME.ckpt")
    parser.add_argument("--prompts", nargs="+", required=True)
    parser.add_argument(
        "--steps", type=int, default=None, help="student: <= ladder length; teacher: 25 (DDIM) / 50 (flow)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples", help="output folder")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--no-ema", action="store_true", help="student: the raw generator, not its EMA")
    parser.add_argument("--teacher", action="store_true", help="sample the frozen teacher instead")
    parser.add_argument(
        "--scheduler",
        default=None,
        choices=sorted(SCHEDULERS),
        help="teacher sampler (default: ddim for AnimateDiff, flow_euler for flow transformers)",
    )
    parser.add_argument("--guidance", type=float, default=7.5, help="teacher CFG scale (1: none)")
    parser.add_argument("--config", default=None, help="run config (default <run>/.hydra/config.yaml)")
    args = parser.parse_args(argv)

    run = load_run(args.ckpt, args.config)
    if run.module.vae is None:
        raise ConfigError("model: the run has no VAE to decode samples with")
    if args.teacher:
        family = run.module.family
        scheduler, steps = args.scheduler or family.reference_sampler, args.steps or family.reference_steps
        if steps < 1:
            raise ConfigError(f"--steps must be >= 1 for the teacher, got {steps}")
        latents = teacher_latents(run, args.prompts, args.seed, steps, scheduler, args.guidance)
        who = f"teacher ({scheduler}, {steps} steps, guidance {args.guidance})"
    else:
        n = run.module.generator.num_steps
        if args.steps is not None and not 1 <= args.steps <= n:
            raise ConfigError(f"--steps must be in [1, {n}] (the generator's ladder), got {args.steps}")
        latents = run.module.sample(args.prompts, args.seed, args.steps, use_ema=not args.no_ema)
        who = f"student ({args.steps or n} steps)"
    paths = write_videos(latents, run.module.vae, list(args.prompts), Path(args.out), args.fps)
    print(f"Wrote {len(paths)} videos of the {who} to {Path(args.out)}:")
    for path in paths:
        print(f"  {path}")
    return paths


if __name__ == "__main__":
    main()
