"""``python -m avdm.data.check CSV VIDEO_DIR``: which OpenVid videos can give a training clip, and why not.

Reads every video's header and packets (``--decode`` also decodes one clip each); trains nothing.
Prints the number of usable videos and one ``name: reason`` line per unusable one; exits 0 when at
least one video is usable, 1 when none is (nothing to train on). A missing CSV or video folder ends
with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from avdm.data.openvid_sources import DataSourceError, read_openvid_csv
from avdm.data.video_io import BadVideoError, clip_indices, clip_span, read_clip, scan_video


def video_problem(path: Path, num_frames: int, stride: int, decode: bool = False) -> str | None:
    """The reason (a :data:`avdm.data.video_io.REASONS` word) ``path`` cannot give a clip, or ``None``."""
    try:
        info = scan_video(path)
        clip_indices(info.num_frames, num_frames, stride, start=0, name=str(path))
        if decode:
            read_clip(path, num_frames, stride, resolution=64, start=0)
    except BadVideoError as err:
        return err.reason
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avdm.data.check", description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="the OpenVid CSV (columns video, caption)")
    parser.add_argument("video_dir", type=Path, help="the folder of the CSV's mp4 files")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--stride", type=int, default=4, help="temporal stride (default 4)")
    parser.add_argument("--decode", action="store_true", help="also decode one clip per video (slow)")
    args = parser.parse_args(argv)
    try:
        rows = read_openvid_csv(args.csv)
        if not args.video_dir.is_dir():
            raise DataSourceError(f"OpenVid video folder not found: {args.video_dir} (data.video_dir)")
    except DataSourceError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if args.num_frames < 1 or args.stride < 1:
        parser.error("--num-frames and --stride must be >= 1")

    problems = [
        (video, reason)
        for video, _ in rows
        if (reason := video_problem(args.video_dir / video, args.num_frames, args.stride, args.decode))
    ]
    span = clip_span(args.num_frames, args.stride)
    clip = f"clips of {args.num_frames} frames at stride {args.stride} need {span} frames"
    print(f"{args.csv}: {len(rows)} videos; {clip}")
    print(f"usable: {len(rows) - len(problems)}")
    by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(Counter(r for _, r in problems).items()))
    print(f"unusable: {len(problems)}" + (f" ({by_reason})" if problems else ""))
    for video, reason in problems:
        print(f"  {video}: {reason}")
    if len(problems) == len(rows):
        print(f"{parser.prog}: error: no usable video in {args.csv}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
