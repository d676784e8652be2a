"""``python -m avdm.probe CKPT --cache DIR``: does a trained model read a caption's words? The word-swap
probe of :mod:`avdm.metrics.word_swap` (its denoising loss with one word swapped) on a run's student or,
with ``--teacher``, its frozen teacher.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from avdm.errors import AvdmUserError, report_user_errors
from avdm.metrics.word_swap import markdown, word_swap_losses


@report_user_errors
def main(argv: Sequence[str] | None = None) -> dict[float, dict[str, float]]:
    parser = argparse.ArgumentParser(prog="python -m avdm.probe", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="<run>/checkpoints/NAME.ckpt")
    parser.add_argument(
        "--cache", required=True, help="a latent cache of shapes clips (python -m avdm.precompute)"
    )
    parser.add_argument("--num", type=int, default=128, help="clips, taken evenly over the cache")
    parser.add_argument("--times", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    parser.add_argument("--teacher", action="store_true", help="probe the run's frozen teacher instead")
    parser.add_argument("--no-ema", action="store_true")
    args = parser.parse_args(argv)
    if args.num < 1 or not all(0.0 < t < 1.0 for t in args.times):
        raise AvdmUserError(f"--num must be >= 1 and --times in (0, 1), got {args.num} and {args.times}")
    from avdm.data.latent_cache import LatentCacheDataset
    from avdm.training.checkpointing.run_loading import load_run

    run = load_run(args.ckpt)
    module = run.module
    denoiser = module.teachers.video if args.teacher else module.sampling_generator(not args.no_ema).denoiser
    dataset = LatentCacheDataset(args.cache)
    picks = torch.linspace(0, len(dataset) - 1, min(args.num, len(dataset))).long().tolist()
    items = [dataset[i] for i in picks]
    latents = torch.stack([item["latents"] for item in items])
    losses = word_swap_losses(
        denoiser, module.prompt_encoder, latents, [i["captions"] for i in items], args.times
    )
    print(markdown(losses))
    return losses


if __name__ == "__main__":
    main()
