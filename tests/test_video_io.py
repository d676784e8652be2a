"""Clip decoding: seeking gives the very frames a full decode gives, shapes, resize + crop, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from video_fixtures import make_audio_only, make_truncated, make_video

from avdm.data.video_io import (
    BadVideoError,
    clip_indices,
    decode_all_frames,
    decode_frames,
    probe_video,
    read_clip,
    scan_video,
)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        "h264": make_video(root / "h264.mp4", frames=40, gop=8),
        "mpeg4": make_video(root / "mpeg4.mp4", frames=40, gop=10, codec="mpeg4"),
        "faststart": make_video(root / "faststart.mp4", frames=30, gop=6, faststart=True),
        "portrait": make_video(root / "portrait.mp4", frames=8, width=48, height=64),
        "root": root,
    }


@pytest.mark.parametrize("kind", ["h264", "mpeg4", "faststart"])
def test_seek_decode_gives_the_frames_of_a_full_decode(videos, kind):
    path = videos[kind]
    reference = decode_all_frames(path)  # (N, H, W, 3)
    n = len(reference)
    assert probe_video(path).num_frames == n
    assert len({frame.tobytes() for frame in reference}) == n  # every frame differs
    for start in range(n - 9):
        indices = clip_indices(n, num_frames=4, stride=3, start=start)
        seeked = decode_frames(path, indices)
        np.testing.assert_array_equal(seeked.frames, reference[indices])
        assert seeked.decoded <= indices[-1] + 1
    late = clip_indices(n, num_frames=4, stride=3, start=n - 10)
    # The keyframe before a late start is past frame 0, so fewer frames are decoded than from the start.
    assert decode_frames(path, late).decoded < decode_frames(path, late, seek=False).decoded == late[-1] + 1


def test_seeking_and_not_seeking_agree_after_resizing(videos):
    indices = [17, 21, 25, 29]
    a = decode_frames(videos["h264"], indices, size=(24, 32))
    b = decode_frames(videos["h264"], indices, size=(24, 32), seek=False)
    assert a.frames.shape == (4, 24, 32, 3)
    np.testing.assert_array_equal(a.frames, b.frames)


def test_clip_shape_range_and_frames(videos):
    clip = read_clip(videos["h264"], num_frames=12, stride=2, resolution=32, start=3)
    assert clip.pixels.shape == (3, 12, 32, 32) and clip.pixels.dtype == torch.float32
    assert clip.pixels.min() >= -1 and clip.pixels.max() <= 1 and clip.pixels.std() > 0.1
    assert clip.frame_indices == list(range(3, 27, 2)) and not clip.repaired
    assert clip.num_video_frames == 40
    # Green encodes the frame index: consecutive output frames are 2 source frames (14 levels) apart.
    green = (clip.pixels[1].mean(dim=(1, 2)) + 1) * 127.5
    np.testing.assert_allclose(np.diff(green.numpy()), 14, atol=3)


@pytest.mark.parametrize("kind", ["h264", "portrait"])
def test_resize_shorter_side_then_center_crop(videos, kind):
    clip = read_clip(videos[kind], num_frames=1, stride=1, resolution=24, start=0).pixels[:, 0]
    values = (clip.permute(1, 2, 0).numpy() + 1) * 127.5  # (24, 24, 3)
    h, w = {"h264": (48, 64), "portrait": (64, 48)}[kind]
    scale = min(h, w) / 24
    top, left = (round(h / scale) - 24) // 2, (round(w / scale) - 24) // 2
    x = (np.arange(24) + left + 0.5) * scale - 0.5  # source coordinates of the output pixel centres
    y = (np.arange(24) + top + 0.5) * scale - 0.5
    red, blue = 16 + 224 * x / (w - 1), 16 + 224 * y / (h - 1)
    assert np.abs(values[..., 0].mean(0) - red).mean() < 4
    assert np.abs(values[..., 2].mean(1) - blue).mean() < 4
    expected_crop = (0, 4) if kind == "h264" else (4, 0)
    assert (top, left) == expected_crop


def test_start_is_drawn_under_the_generator():
    draws = [clip_indices(40, 4, 4, generator=torch.Generator().manual_seed(s)) for s in range(8)]
    again = [clip_indices(40, 4, 4, generator=torch.Generator().manual_seed(s)) for s in range(8)]
    assert draws == again
    assert len({d[0] for d in draws}) > 1
    assert all(0 <= d[0] and d[-1] < 40 and np.all(np.diff(d) == 4) for d in draws)
    assert clip_indices(40, 4, 4, start=27) == [27, 31, 35, 39]
    with pytest.raises(BadVideoError, match="too_short"):
        clip_indices(40, 4, 4, start=28)


def test_too_short_policies(videos):
    with pytest.raises(BadVideoError) as err:
        clip_indices(9, 4, 3)
    assert err.value.reason == "too_short"
    assert clip_indices(10, 4, 4, too_short="loop") == [0, 4, 8, 2]
    assert clip_indices(10, 4, 4, too_short="pad") == [0, 4, 8, 9]
    with pytest.raises(ValueError, match="loop"):
        clip_indices(10, 4, 4, too_short="wrap")

    reference = decode_all_frames(videos["portrait"])  # 8 frames
    looped = read_clip(videos["portrait"], 4, 3, resolution=48, too_short="loop")
    assert looped.repaired and looped.frame_indices == [0, 3, 6, 1]
    crop = torch.from_numpy(reference[[0, 3, 6, 1], 8:56]).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(looped.pixels, crop)
    padded = read_clip(videos["portrait"], 4, 3, resolution=48, too_short="pad")
    assert padded.repaired and padded.frame_indices == [0, 3, 6, 7]
    crop = torch.from_numpy(reference[[0, 3, 6, 7], 8:56]).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(padded.pixels, crop)
    with pytest.raises(BadVideoError, match="too_short"):
        read_clip(videos["portrait"], 4, 3, resolution=48)


def test_reads_bytes_like_paths(videos):
    path = videos["h264"]
    a = read_clip(path, 4, 2, 32, start=11)
    b = read_clip(path.read_bytes(), 4, 2, 32, start=11, name="from-bytes")
    assert torch.equal(a.pixels, b.pixels)
    with pytest.raises(BadVideoError, match="from-bytes: empty"):
        read_clip(b"", name="from-bytes")


def test_bad_files_raise_typed_errors(videos):
    root = videos["root"]
    (root / "empty.mp4").write_bytes(b"")
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(2000))
    cases = {
        root / "missing.mp4": "missing",
        root / "empty.mp4": "empty",
        make_truncated(root / "cut.mp4", videos["h264"]): "corrupt",
        make_truncated(root / "cut_faststart.mp4", videos["faststart"]): "corrupt",
        root / "noise.mp4": "corrupt",
        make_audio_only(root / "audio.mp4"): "no_video_stream",
        make_video(root / "short.mp4", frames=5): "too_short",
    }
    for path, reason in cases.items():
        with pytest.raises(BadVideoError) as err:
            read_clip(path, num_frames=4, stride=2, resolution=16)
        assert (err.value.reason, err.value.path) == (reason, str(path)), path.name
        assert str(err.value).startswith(f"{path}: {reason}")


def test_scan_catches_a_cut_file_whose_header_survives(videos):
    cut = make_truncated(videos["root"] / "cut_header_first.mp4", videos["faststart"])
    assert probe_video(cut).num_frames == 30  # the header at the front still claims every frame
    with pytest.raises(BadVideoError, match="corrupt"):
        scan_video(cut)
    assert scan_video(videos["faststart"]).num_frames == 30
