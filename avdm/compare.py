"""``python -m avdm.compare``: teacher and students on the same prompts and noise, one results table.

Rows: every ``--teacher`` (AnimateDiff: DDIM, flow transformers: Euler) at its full steps (25 / 50, or
``--teacher-steps``) and at ``--few-steps`` (4), both with CFG, then every
``--student LABEL=CKPT`` at its full ladder, and held-out real clips (the floor of every metric). Each
row writes its videos (``ROW/NNN.mp4`` + ``captions.csv``) and is scored with :func:`avdm.evaluate.evaluate`
against a reference set of real clips: FVD with the shapes classifier and with the fallback (or I3D)
extractor (both named), prompt accuracy (shapes captions), motion faithfulness, temporal consistency,
NFE and wall-clock seconds per video (text encoding + sampling + VAE decode, on this machine, batches of
``--batch-size``).

Writes ``results.json``, ``results.md`` and ``frames.png`` (the frames of a few prompts for every row,
side by side) to ``--out``. ``make demo-eval`` trains the three students of
the README's table and runs this on the shipped shapes teacher.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from avdm.errors import AvdmUserError, report_user_errors

if TYPE_CHECKING:
    from avdm.models.sampling import Sampler


@dataclass
class Row:
    label: str
    nfe: int
    sampler: Sampler
    prompt_encoder: torch.nn.Module
    vae: torch.nn.Module
    latent_shape: tuple[int, ...]
    guided: bool = False  # the sampler takes the empty prompt's embedding (CFG)


def shapes_prompts(per_caption: int) -> list[str]:
    """Every shapes caption ``per_caption`` times (:func:`avdm.data.shapes.every_caption`)."""
    from avdm.data.shapes import every_caption

    return every_caption(per_caption)


@torch.no_grad()
def generate(
    row: Row,
    prompts: Sequence[str],
    out: Path,
    seed: int,
    batch_size: int,
    fps: int = 8,
) -> float:
    """Write ``out/NNN.mp4`` for every prompt (noise of video ``i`` from seed ``(seed, i)``, the same for
    every row) plus ``captions.csv``; returns wall-clock seconds per video, file writing excluded."""
    from avdm.data.visualize import video_grid, write_mp4
    from avdm.models.sampling import latents_for_prompts
    from avdm.models.vae import decode_latents

    out.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    names = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        began = time.perf_counter()
        latents = latents_for_prompts(
            row.sampler, row.prompt_encoder, chunk, row.latent_shape, seed, start, guided=row.guided
        )
        videos = decode_latents(row.vae, latents)
        seconds += time.perf_counter() - began
        for j, video in enumerate(videos):
            name = f"{start + j:03d}.mp4"
            write_mp4(out / name, video_grid(video[None]), fps, crf=14)  # the dataset's quality
            names.append(name)
    with (out / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("video", "caption"))
        writer.writerows(zip(names, prompts))
    return seconds / len(prompts)


SAMPLER_NAMES = {"ddim": "DDIM", "flow_euler": "Euler", "euler": "Euler"}


def teacher_row(bundle, steps: int, guidance: float, name: str = "teacher") -> Row:  # noqa: ANN001
    from avdm.models.sampling import teacher_sampler

    kind = bundle.family.reference_sampler
    sampler = teacher_sampler(bundle.video_teacher, bundle.scheduler_config, kind, steps, guidance)
    nfe = steps * (2 if guidance != 1.0 else 1)
    label = f"{name}, {steps} {SAMPLER_NAMES[kind]} steps, CFG {guidance:g}"
    return Row(
        label, nfe, sampler, bundle.prompt_encoder, bundle.vae, tuple(bundle.latent_shape), guided=True
    )


def load_teacher(spec: str):  # noqa: ANN201 (ModelBundle, lazy import)
    """A teacher bundle from a ``conf/model`` config name (``animatediff_shapes``, ``wan_shapes``) or an
    AnimateDiff diffusers folder."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import avdm.config  # noqa: F401  (the ${avdm_asset:...} resolver)
    from avdm.config import CONFIG_DIR
    from avdm.models.families.animatediff import build_animatediff

    if Path(spec).is_dir():
        bundle = build_animatediff(
            source="pretrained",
            pretrained={"base_model": spec, "motion_adapter": None, "local_files_only": True},
            num_frames=8,
            resolution=32,
        )
    else:
        config = Path(CONFIG_DIR) / "model" / f"{spec}.yaml"
        if not config.is_file():
            names = sorted(p.stem for p in config.parent.glob("*.yaml"))
            raise AvdmUserError(f"--teacher {spec!r}: not a folder nor a model config; configs: {names}")
        bundle = instantiate(OmegaConf.load(config))
    for part in (bundle.video_teacher, bundle.prompt_encoder, bundle.vae):
        part.eval()
    return bundle


def student_row(label: str, ckpt: str) -> Row:
    from avdm.models.sampling import student_sampler
    from avdm.training.checkpointing.run_loading import load_run

    module = load_run(ckpt).module
    generator = module.sampling_generator()
    return Row(
        f"student: {label}",
        generator.num_steps,
        student_sampler(generator),
        module.prompt_encoder,
        module.vae,
        tuple(module.latent_shape),
    )


COLUMNS = (  # (header, result key, format); None where a row has no value
    ("NFE", "nfe", "d"),
    ("s / video", "seconds_per_video", ".4f"),
    ("FVD ({shapes})", "fvd_shapes", ".4g"),
    ("FVD ({fallback})", "fvd", ".4g"),
    ("prompt accuracy", "prompt_accuracy_all", ".3f"),
    ("colour", "prompt_accuracy_colour", ".3f"),
    ("shape", "prompt_accuracy_shape", ".3f"),
    ("direction", "prompt_accuracy_direction", ".3f"),
    ("motion faithful", "motion_faithful", ".3f"),
    ("identity", "motion_identity", ".3f"),
    ("smooth", "motion_smoothness", ".3f"),
    ("persistent", "motion_persistence", ".3f"),
    ("temporal consistency", "temporal_consistency", ".3f"),
    ("CLIPScore", "clip_score", ".2f"),  # only with --clip-path
)


def markdown(rows: list[dict[str, object]]) -> str:
    """The results table: one row per run, columns :data:`COLUMNS` (extractor names in the headers)."""
    names = {"shapes": rows[0]["fvd_shapes_extractor"], "fallback": rows[0]["fvd_extractor"]}
    columns = [c for c in COLUMNS if c[1] != "clip_score" or any("clip_score" in r for r in rows)]
    headers = [h.format(**names) for h, _, _ in columns]
    head = "| run | " + " | ".join(headers) + " |\n|" + "---|" * (len(columns) + 1) + "\n"

    def cell(value: object, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"| {r['label']} | " + " | ".join(cell(r.get(key), fmt) for _, key, fmt in columns) + " |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def compare(
    students: Sequence[tuple[str, str]],
    teachers: Sequence[str] | str,
    out: Path,
    per_caption: int = 2,
    teacher_steps: int | None = None,
    few_steps: int = 4,
    guidance: float = 4.0,
    seed: int = 0,
    batch_size: int = 30,
    i3d_path: str | None = None,
    prompts: Sequence[str] | None = None,
    clip_path: str | None = None,
) -> list[dict[str, object]]:
    """Generate and score every row; returns the rows (also written as ``out/results.{json,md}``).

    ``teachers``: model config names or AnimateDiff folders (:func:`load_teacher`); each gives two rows,
    its full sampler (``teacher_steps``, default: its reference sampler's) and ``few_steps``, both with
    CFG ``guidance``. ``prompts``: shapes captions to use instead of every caption ``per_caption`` times.
    ``clip_path``: a local CLIP folder, to add the frame-mean CLIPScore column.
    """
    from avdm.data.shapes import VIDEO_DIR, write_shapes_dataset
    from avdm.evaluate import evaluate

    prompts = list(prompts) if prompts is not None else shapes_prompts(per_caption)
    # Real clips with seeds unseen in training: the reference, and a second draw as the "real" row.
    reference = write_shapes_dataset(out / "reference", len(prompts), num_frames=8, size=32, seed=10_001)
    real = write_shapes_dataset(out / "real_heldout", len(prompts), num_frames=8, size=32, seed=10_002)
    teachers = [teachers] if isinstance(teachers, str) else list(teachers)
    rows: list[Row] = []
    for spec in teachers:
        bundle = load_teacher(spec)
        name = "teacher" if len(teachers) == 1 else f"teacher {Path(spec).name}"
        full = teacher_steps or bundle.family.reference_steps
        rows += [teacher_row(bundle, full, guidance, name), teacher_row(bundle, few_steps, guidance, name)]
    rows += [student_row(label, ckpt) for label, ckpt in students]
    torch.set_grad_enabled(False)
    results: list[dict[str, object]] = []
    for i, row in enumerate(rows):
        folder = out / f"row{i}"
        seconds = generate(row, prompts, folder, seed, batch_size)
        scores = evaluate(
            folder, reference.parent / VIDEO_DIR, i3d_path, num_frames=8, resolution=32, clip_path=clip_path
        )
        results.append({"label": row.label, "nfe": row.nfe, "seconds_per_video": seconds, **scores})
        print(
            f"{row.label}: FVD {scores['fvd_shapes']:.4g} (shapes) {scores['fvd']:.4g} (fallback), "
            f"prompt accuracy {scores['prompt_accuracy_all']:.3f}, "
            f"motion faithful {scores['motion_faithful']:.3f}"
        )
    # The dataset CSV holds the real clips' captions; evaluate() reads captions.csv beside the videos.
    shutil.copyfile(real, real.parent / VIDEO_DIR / "captions.csv")
    scores = evaluate(
        real.parent / VIDEO_DIR, reference.parent / VIDEO_DIR, i3d_path, 8, 32, clip_path=clip_path
    )
    results.append({"label": "real clips (held out)", "nfe": None, "seconds_per_video": None, **scores})
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    write_figure(out, [r.label for r in rows], prompts)
    return results


def figure_prompts(prompts: Sequence[str], count: int = 4) -> list[int]:
    """Indices of up to ``count`` prompts, each the first one of a new direction of motion."""
    picked: list[int] = []
    seen: set[str] = set()
    for i, prompt in enumerate(prompts):
        key = prompt.split()[-1]
        if key not in seen:
            picked.append(i)
            seen.add(key)
        if len(picked) == count:
            break
    return picked


def write_figure(out: Path, labels: Sequence[str], prompts: Sequence[str]) -> Path:
    """``out/frames.png``: the frames of a few prompts for every row, side by side (from ``out/row*/``)."""
    from avdm.data.video_folder import load_videos
    from avdm.data.visualize import frames_sheet

    picks = figure_prompts(prompts)
    runs = []
    for i, label in enumerate(labels):
        videos = load_videos(out / f"row{i}", 8, 32)[1]
        runs.append((label, videos[picks]))
    return frames_sheet(runs, [prompts[i] for i in picks], out / "frames.png")


@report_user_errors
def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    from avdm.config import asset_path

    parser = argparse.ArgumentParser(prog="python -m avdm.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--student", action="append", default=[], metavar="LABEL=CKPT", help="a student row (repeatable)"
    )
    parser.add_argument(
        "--teacher",
        action="append",
        default=None,
        help="a teacher: conf/model config name (animatediff_shapes, wan_shapes) or AnimateDiff folder "
        "(repeatable; default: the shipped AnimateDiff shapes teacher)",
    )
    parser.add_argument("--per-caption", type=int, default=2, help="videos per shapes caption (60 captions)")
    parser.add_argument(
        "--teacher-steps", type=int, default=None, help="full teacher steps (default: DDIM 25, flow Euler 50)"
    )
    parser.add_argument("--few-steps", type=int, default=4, help="the teacher's second row")
    parser.add_argument("--guidance", type=float, default=4.0, help="teacher CFG scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--i3d-path", default=None, help="local I3D TorchScript file for the standard FVD")
    parser.add_argument("--clip-path", default=None, help="local CLIP folder: adds the CLIPScore column")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare"))
    args = parser.parse_args(argv)
    if args.per_caption < 1:
        raise AvdmUserError(f"--per-caption must be >= 1 (videos per shapes caption), got {args.per_caption}")
    students = []
    for spec in args.student:
        label, sep, ckpt = spec.partition("=")
        if not sep or not Path(ckpt).is_file():
            raise AvdmUserError(f"--student {spec!r}: expected LABEL=CKPT with an existing checkpoint file")
        students.append((label, ckpt))
    results = compare(
        students,
        args.teacher or [asset_path("shapes_teacher")],
        args.out,
        args.per_caption,
        args.teacher_steps,
        few_steps=args.few_steps,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        i3d_path=args.i3d_path,
        clip_path=args.clip_path,
    )
    print(markdown(results))
    print(f"Results in {args.out / 'results.md'} and {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
