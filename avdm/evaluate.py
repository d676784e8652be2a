"""``python -m avdm.evaluate --generated DIR --reference DIR``: score a folder of generated videos.

Metrics, written as ``results.json`` and ``results.md`` in ``--out``:

* FVD against the reference folder, with the standard I3D when ``--i3d-path`` points at its TorchScript
  file, else the fallback extractor; the extractor's name is in every report (FVD values of different
  extractors are not comparable).
* Temporal consistency: mean cosine similarity of consecutive, mean-centred frames (1 = static video;
  flicker and scene jumps lower it).
* Prompt accuracy (colour, shape, direction read from the pixels), motion faithfulness (the object
  persists, keeps its colour and shape, moves without jumps along a straight constant-speed path:
  :mod:`avdm.metrics.motion`) and FVD on the features of the shipped
  shapes classifier (``fvd_shapes``; :mod:`avdm.metrics.shapes_classifier`) when every caption is a shapes
  caption.

Captions come from ``captions.csv`` (``video,caption``) in the generated folder, else from file names
as ``avdm.sample`` writes them (``NN_a_red_circle_moving_left.mp4``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from avdm.data.video_folder import captions_for, load_videos
from avdm.errors import AvdmUserError, report_user_errors

__all__ = ["captions_for", "evaluate", "load_videos", "main", "temporal_consistency"]


def temporal_consistency(videos: Tensor) -> float:
    """Mean cosine similarity of consecutive mean-centred frames of ``(N, 3, F, H, W)`` clips."""
    frames = videos.permute(0, 2, 1, 3, 4).flatten(2)  # (N, F, 3 H W)
    frames = frames - frames.mean(dim=2, keepdim=True)
    return float(torch.nn.functional.cosine_similarity(frames[:, 1:], frames[:, :-1], dim=2).mean())


def evaluate(
    generated: Path,
    reference: Path,
    i3d_path: str | None = None,
    num_frames: int = 16,
    resolution: int = 64,
    seed: int = 0,
    clip_path: str | None = None,
) -> dict[str, object]:
    """All metrics for ``generated`` against ``reference`` (see the module docstring); ``clip_path``:
    a local CLIP folder, to add the frame-mean CLIPScore against the captions."""
    from avdm.data.shapes import parse_caption
    from avdm.metrics import MotionFaithfulness, PromptAccuracy, build_fvd

    names, fake = load_videos(generated, num_frames, resolution)
    _, real = load_videos(reference, num_frames, resolution)
    fvd = build_fvd(i3d_path, seed=seed)
    fvd.update(real, real=True)
    fvd.update(fake, real=False)
    result: dict[str, object] = {
        "generated": str(generated),
        "reference": str(reference),
        "num_generated": len(names),
        "num_reference": real.shape[0],
        "frames": num_frames,
        "resolution": resolution,
        "fvd": float(fvd.compute()),
        "fvd_extractor": fvd.extractor_name,
        "temporal_consistency": temporal_consistency(fake),
        "temporal_consistency_reference": temporal_consistency(real),
    }
    captions = captions_for(generated, names)
    if clip_path is not None:
        from avdm.metrics.clip_score import FrameCLIPScore

        clip = FrameCLIPScore(clip_path)
        clip.update(fake, captions)
        result["clip_score"] = float(clip.compute())
    try:
        for text in captions:
            parse_caption(text)
    except ValueError:
        return result
    accuracy = PromptAccuracy()
    accuracy.update(fake, captions)
    result.update({f"prompt_accuracy_{k}": float(v) for k, v in accuracy.compute().items()})
    motion = MotionFaithfulness()
    motion.update(fake)
    result.update({f"motion_{k}": float(v) for k, v in motion.compute().items()})
    # Shapes captions: also FVD on the features of the shapes classifier, which see content and motion.
    shapes_fvd = build_fvd(None, extractor="shapes")
    shapes_fvd.update(real, real=True)
    shapes_fvd.update(fake, real=False)
    result.update(fvd_shapes=float(shapes_fvd.compute()), fvd_shapes_extractor=shapes_fvd.extractor_name)
    return result


def write_report(result: dict[str, object], out: Path) -> tuple[Path, Path]:
    """``results.json`` and a one-row markdown table ``results.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    keys = [k for k in result if k not in ("generated", "reference")]
    cells = [f"{result[k]:.4g}" if isinstance(result[k], float) else str(result[k]) for k in keys]
    table = f"| {' | '.join(keys)} |\n| {' | '.join('---' for _ in keys)} |\n| {' | '.join(cells)} |\n"
    (out / "results.md").write_text(
        f"Generated: `{result['generated']}`, reference: `{result['reference']}`\n\n" + table
    )
    return out / "results.json", out / "results.md"


@report_user_errors
def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m avdm.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--generated", type=Path, required=True, help="folder of generated .mp4 files")
    parser.add_argument("--reference", type=Path, required=True, help="folder of reference .mp4 clips")
    parser.add_argument("--i3d-path", default=None, help="local I3D TorchScript file (eval.i3d_path)")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fallback extractor")
    parser.add_argument("--clip-path", default=None, help="local CLIP folder: adds the frame-mean CLIPScore")
    parser.add_argument("--out", type=Path, default=Path("eval"))
    args = parser.parse_args(argv)
    for folder, flag in ((args.generated, "--generated"), (args.reference, "--reference")):
        if not folder.is_dir():
            raise AvdmUserError(f"{flag} '{folder}' is not a folder")
    result = evaluate(
        args.generated, args.reference, args.i3d_path, args.num_frames, args.resolution, args.seed,
        args.clip_path,
    )  # fmt: skip
    json_path, md_path = write_report(result, args.out)
    print(f"FVD ({result['fvd_extractor']}) {result['fvd']:.4g}; results in {json_path} and {md_path}")
    return result


if __name__ == "__main__":
    main()
