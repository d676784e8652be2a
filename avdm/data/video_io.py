"""Decode training clips from video files with PyAV, touching only the frames a clip needs.

A clip is ``num_frames`` frames taken every ``stride``-th source frame from a start frame. The
decoder seeks (container-level, backward) to the keyframe at or before the first needed frame,
decodes forward, and stops at the last needed frame. Frames are resized with swscale (bilinear,
whose filter widens with the downscale factor, i.e. antialiased) so the shorter side equals the
target resolution, then center-cropped to a square. Source frames are numbered by presentation time
(constant frame rate assumed, as in OpenVid-1M), so seeking yields exactly the frames that decoding
everything from the start would.

Every way a file can be unusable raises :class:`BadVideoError` with a short, stable reason word.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import av
import numpy as np
import torch
from torch import Tensor

REASONS = ("missing", "empty", "corrupt", "no_video_stream", "too_short")
TOO_SHORT_POLICIES = ("error", "loop", "pad")
TooShort = Literal["error", "loop", "pad"]
VideoSource = str | os.PathLike | bytes | BinaryIO


class BadVideoError(Exception):
    """A video that cannot give a clip; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-video reason {reason!r}; valid: {', '.join(REASONS)}")
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says about the first video stream."""

    num_frames: int
    fps: Fraction
    width: int
    height: int


class DecodedFrames(NamedTuple):
    """``frames``: uint8 ``(N, H, W, 3)`` RGB, one per requested index (in request order);
    ``decoded``: how many frames the decoder produced to get them."""

    frames: np.ndarray
    decoded: int


class Clip(NamedTuple):
    """``pixels``: float32 ``(3, F, H, W)`` in [-1, 1]; ``frame_indices``: the source frame of each
    output frame; ``num_video_frames``: frames in the source; ``repaired``: the source was too short
    and frames were looped or padded."""

    pixels: Tensor
    frame_indices: list[int]
    num_video_frames: int
    repaired: bool


def clip_span(num_frames: int, stride: int) -> int:
    """Source frames a clip covers: ``(num_frames - 1) * stride + 1``."""
    return (num_frames - 1) * stride + 1


def probe_video(source: VideoSource, name: str | None = None) -> VideoInfo:
    """Header facts of ``source`` (a path, bytes or a binary file); raises :class:`BadVideoError`."""
    name = _name(source, name)
    with _open(source, name) as container:
        return _info(container, name)


def scan_video(source: VideoSource, name: str | None = None) -> VideoInfo:
    """:func:`probe_video` checked against the file's packets (read, not decoded): a file cut short
    raises ``BadVideoError(corrupt)``, and ``num_frames`` is the packet count."""
    name = _name(source, name)
    with _open(source, name) as container:
        info = _info(container, name)
        try:
            packets = sum(1 for p in container.demux(container.streams.video[0]) if p.size > 0)
        except av.FFmpegError as err:
            raise BadVideoError(name, "corrupt", str(err)) from err
    if packets < info.num_frames:
        raise BadVideoError(name, "corrupt", f"header says {info.num_frames} frames, file holds {packets}")
    return VideoInfo(packets, info.fps, info.width, info.height)


def clip_indices(
    num_available: int,
    num_frames: int = 16,
    stride: int = 4,
    start: int | None = None,
    generator: torch.Generator | None = None,
    too_short: TooShort = "error",
    name: str = "<video>",
) -> list[int]:
    """Source frame indices of a clip from a video of ``num_available`` frames.

    ``start`` defaults to a uniform draw (under ``generator``) among the starts whose clip fits. Where
    the clip runs past the end, ``too_short`` decides: ``error`` raises ``BadVideoError(too_short)``,
    ``loop`` wraps around to frame 0, ``pad`` repeats the last frame.
    """
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    if too_short not in TOO_SHORT_POLICIES:
        raise ValueError(f"unknown too_short policy {too_short!r}; valid: {', '.join(TOO_SHORT_POLICIES)}")
    if num_available < 1:
        raise BadVideoError(name, "too_short", "no frames")
    span = clip_span(num_frames, stride)
    if start is None:
        choices = max(num_available - span + 1, 1)
        start = int(torch.randint(choices, (1,), generator=generator)) if choices > 1 else 0
    if not 0 <= start < num_available:
        raise ValueError(f"start frame {start} outside the video's {num_available} frames")
    indices = [start + i * stride for i in range(num_frames)]
    if indices[-1] < num_available:
        return indices
    if too_short == "error":
        raise BadVideoError(name, "too_short", f"{num_available} frames, clip needs {start + span}")
    if too_short == "loop":
        return [i % num_available for i in indices]
    return [min(i, num_available - 1) for i in indices]


def decode_frames(
    source: VideoSource,
    indices: Sequence[int],
    size: tuple[int, int] | None = None,
    seek: bool = True,
    name: str | None = None,
) -> DecodedFrames:
    """Frames ``indices`` of ``source`` as RGB uint8, resized to ``size = (height, width)`` if given.

    With ``seek`` the container seeks to the keyframe before the first index; without, it decodes
    from the first frame. Either way decoding stops at the last index.
    """
    name = _name(source, name)
    with _open(source, name) as container:
        return _decode(container, _info(container, name), indices, size, seek, name)


def read_clip(
    source: VideoSource,
    num_frames: int = 16,
    stride: int = 4,
    resolution: int = 512,
    start: int | None = None,
    generator: torch.Generator | None = None,
    too_short: TooShort = "error",
    seek: bool = True,
    name: str | None = None,
) -> Clip:
    """A ``(3, num_frames, resolution, resolution)`` clip in [-1, 1] (see :func:`clip_indices` for
    ``start``, ``generator`` and ``too_short``); raises :class:`BadVideoError`."""
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    name = _name(source, name)
    with _open(source, name) as container:
        info = _info(container, name)
        indices = clip_indices(info.num_frames, num_frames, stride, start, generator, too_short, name)
        size = resized_shape(info.height, info.width, resolution)
        frames = _decode(container, info, indices, size, seek, name).frames
    pixels = center_crop(torch.from_numpy(frames), resolution)  # (F, R, R, 3) uint8
    pixels = pixels.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
    repaired = indices != [indices[0] + i * stride for i in range(num_frames)]
    return Clip(pixels, indices, info.num_frames, repaired)


def resized_shape(height: int, width: int, resolution: int) -> tuple[int, int]:
    """``(height, width)`` scaled so that the shorter side is ``resolution`` (the longer one rounded)."""
    if height <= width:
        return resolution, max(resolution, round(width * resolution / height))
    return max(resolution, round(height * resolution / width)), resolution


def center_crop(frames: Tensor, resolution: int) -> Tensor:
    """The central ``resolution x resolution`` window of channels-last frames ``(..., H, W, C)``."""
    h, w = frames.shape[-3], frames.shape[-2]
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return frames[..., top : top + resolution, left : left + resolution, :]


def decode_all_frames(source: VideoSource, name: str | None = None) -> np.ndarray:
    """Every frame of the first video stream, uint8 ``(N, H, W, 3)`` RGB, in presentation order.

    The reference that seeking decoders are compared with; it never seeks.
    """
    name = _name(source, name)
    with _open(source, name) as container:
        if not container.streams.video:
            raise BadVideoError(name, "no_video_stream")
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
        except av.FFmpegError as err:
            raise BadVideoError(name, "corrupt", str(err)) from err
    if not frames:
        raise BadVideoError(name, "too_short", "no frames")
    return np.stack(frames)


def _name(source: VideoSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", "<bytes>")


def _open(source: VideoSource, name: str) -> av.container.InputContainer:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise BadVideoError(name, "missing")
        if path.stat().st_size == 0:
            raise BadVideoError(name, "empty")
        source = str(path)
    elif isinstance(source, bytes):
        if not source:
            raise BadVideoError(name, "empty")
        source = io.BytesIO(source)
    try:
        return av.open(source, mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise BadVideoError(name, "corrupt", str(err)) from err


def _info(container: av.container.InputContainer, name: str) -> VideoInfo:
    if not container.streams.video:
        raise BadVideoError(name, "no_video_stream")
    stream = container.streams.video[0]
    fps = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not fps or not stream.width or not stream.height:
        raise BadVideoError(name, "corrupt", "no frame rate or frame size in the header")
    num_frames = stream.frames
    if num_frames <= 0 and stream.duration is not None:
        num_frames = int(stream.duration * stream.time_base * fps)
    if num_frames <= 0 and container.duration is not None:
        num_frames = int(Fraction(container.duration, av.time_base) * fps)
    return VideoInfo(int(num_frames), Fraction(fps), int(stream.width), int(stream.height))


def _decode(
    container: av.container.InputContainer,
    info: VideoInfo,
    indices: Sequence[int],
    size: tuple[int, int] | None,
    seek: bool,
    name: str,
) -> DecodedFrames:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    wanted = set(indices)
    first, last = min(wanted), max(wanted)
    start_pts = stream.start_time or 0

    def index_of(frame: av.VideoFrame) -> int:
        return round((frame.pts - start_pts) * stream.time_base * info.fps)

    def frames_from(seek_to: int | None) -> Iterator[tuple[int, av.VideoFrame]]:
        if seek_to is not None:
            container.seek(seek_to, stream=stream, backward=True, any_frame=False)
        for ordinal, frame in enumerate(container.decode(stream)):
            # Without pts (rare raw streams) only a decode from the first frame can count frames.
            yield (ordinal if frame.pts is None else index_of(frame)), frame

    kwargs = {"format": "rgb24", "interpolation": "BILINEAR"}
    if size is not None:
        kwargs.update(height=size[0], width=size[1])
    got: dict[int, np.ndarray] = {}
    decoded = 0
    seek_to = start_pts + int(first / info.fps / stream.time_base) if seek and first > 0 else None
    try:
        for attempt in range(2):
            for index, frame in frames_from(seek_to):
                decoded += 1
                if index > first and not got and attempt == 0 and seek_to is not None:
                    break  # the seek landed past the first wanted frame: start over from frame 0
                if index in wanted and index not in got:
                    got[index] = frame.to_ndarray(**kwargs)
                if index >= last:
                    break
            if got or seek_to is None:
                break
            seek_to = start_pts
    except av.FFmpegError as err:
        raise BadVideoError(name, "corrupt", str(err)) from err
    if len(got) < len(wanted):
        missing = sorted(wanted - got.keys())
        raise BadVideoError(name, "corrupt", f"frames {missing[0]}..{missing[-1]} could not be decoded")
    return DecodedFrames(np.stack([got[i] for i in indices]), decoded)
