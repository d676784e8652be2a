"""Small real video files for the data tests, written with PyAV (libx264 and aac ship in the av wheel)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import av
import numpy as np


def pattern_frame(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame ``i`` of the test pattern, RGB uint8 ``(H, W, 3)``: red rises with x, blue with y, and
    green encodes the frame index (so every frame differs)."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = np.linspace(16, 240, width, dtype=np.float32)[None, :].round()
    frame[..., 1] = (i * 7) % 200 + 20
    frame[..., 2] = np.linspace(16, 240, height, dtype=np.float32)[:, None].round()
    return frame


def make_video(
    path: str | Path,
    frames: int = 40,
    width: int = 64,
    height: int = 48,
    fps: int = 24,
    codec: str = "libx264",
    gop: int = 8,
    faststart: bool = False,
) -> Path:
    """Write ``frames`` frames of :func:`pattern_frame` to ``path``, a keyframe at least every ``gop``."""
    path = Path(path)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "ultrafast" if width * height > 1e6 else "medium"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An .mp4 whose only stream is AAC audio (silence)."""
    path = Path(path)
    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for k in range(int(seconds * rate) // 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_truncated(path: str | Path, source: str | Path) -> Path:
    """The first half of the bytes of ``source``."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


def make_bad_videos(folder: Path, good: Path) -> dict[str, str]:
    """One file of every bad kind in ``folder`` (``missing`` is named but not written): name -> reason."""
    (folder / "empty.mp4").write_bytes(b"")
    make_truncated(folder / "truncated.mp4", good)
    make_audio_only(folder / "audio_only.mp4")
    make_video(folder / "short.mp4", frames=6)
    return {
        "missing.mp4": "missing",
        "empty.mp4": "empty",
        "truncated.mp4": "corrupt",
        "audio_only.mp4": "no_video_stream",
        "short.mp4": "too_short",
    }


def write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    """An OpenVid-style CSV (headers with spaces included) of ``(video, caption)`` rows."""
    lines = ["video,caption,aesthetic score,motion score,camera motion"]
    lines += [f'{video},"{caption}",5.1,2.3,static' for video, caption in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_shard(path: Path, samples: Mapping[str, tuple[bytes | None, str | None]]) -> Path:
    """A WebDataset tar of ``KEY.mp4`` / ``KEY.txt`` members (a ``None`` part is left out)."""
    with tarfile.open(path, "w") as tar:
        for key, (video, caption) in samples.items():
            for ext, data in (("mp4", video), ("txt", None if caption is None else caption.encode())):
                if data is None:
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path
