"""The shapes dataset and its prompt-accuracy reader: every combination renders, survives H.264 and
blur, and is read back; the CSV + mp4 folder loads through the OpenVid data path."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch

from avdm.data.openvid_folder import OpenVidDataset
from avdm.data.shapes import (
    BACKGROUND,
    COMBINATIONS,
    PALETTE,
    caption,
    main,
    parse_caption,
    render_clip,
    write_shapes_dataset,
)
from avdm.data.video_io import decode_all_frames
from avdm.metrics import PromptAccuracy, read_shape_attributes

FRAMES, SIZE = 16, 64


def _clip(combo: tuple[str, str, str], seed: int = 0, size: int = SIZE) -> np.ndarray:
    return render_clip(*combo, FRAMES, size, np.random.default_rng(seed))


def _to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def _blur(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every frame of a (3, F, H, W) video (separable conv, replicate padding)."""
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    frames = video.permute(1, 0, 2, 3).reshape(-1, 1, *video.shape[-2:])  # (F * 3, 1, H, W)
    frames = torch.nn.functional.pad(frames, (radius,) * 4, mode="replicate")
    frames = torch.nn.functional.conv2d(frames, k.view(1, 1, 1, -1))
    frames = torch.nn.functional.conv2d(frames, k.view(1, 1, -1, 1))
    return frames.reshape(video.shape[1], 3, *video.shape[-2:]).permute(1, 0, 2, 3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    csv_path = write_shapes_dataset(root, num_videos=len(COMBINATIONS), num_frames=FRAMES, size=SIZE, seed=3)
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return root, csv_path, rows


def test_captions_round_trip_and_reject_other_text():
    for combo in COMBINATIONS:
        assert parse_caption(caption(*combo)) == combo
    assert parse_caption("  A Red Circle moving LEFT. ") == ("red", "circle", "left")
    for bad in ("a red circle moving", "a pink circle moving left", "a red cube moving left", ""):
        with pytest.raises(ValueError, match="not a shapes caption"):
            parse_caption(bad)


def test_render_clip_is_seeded_inside_the_frame_and_moves():
    clip = _clip(("red", "square", "right"), seed=1)
    assert clip.shape == (FRAMES, SIZE, SIZE, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, _clip(("red", "square", "right"), seed=1))
    assert not np.array_equal(clip, _clip(("red", "square", "right"), seed=2))
    border = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], axis=1)
    assert (border == np.array(BACKGROUND, np.uint8)).all()
    assert (clip == np.array(PALETTE["red"], np.uint8)).all(-1).sum((1, 2)).min() > 0.8 * (SIZE / 4) ** 2
    weight = clip[..., 0].astype(np.float64)  # coverage-weighted centroid: exact under antialiasing
    xs = (weight * np.arange(SIZE)).sum((1, 2)) / weight.sum((1, 2))
    steps = np.diff(xs)
    # constant speed, rightwards, to within the renderer's quarter-pixel sub-sampling
    assert steps.min() > 1 and np.abs(steps - steps.mean()).max() <= 0.25 + 1e-6


@pytest.mark.parametrize("size", [64, 32])
def test_reads_every_rendered_combination(size):
    for i, combo in enumerate(COMBINATIONS):
        assert read_shape_attributes(_clip(combo, seed=i, size=size)) == combo


def test_reads_every_combination_after_an_mp4_round_trip(dataset):
    root, _, rows = dataset
    assert Counter(parse_caption(r["caption"]) for r in rows) == Counter(COMBINATIONS)
    for row in rows:
        frames = decode_all_frames(root / "videos" / row["video"])
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
        assert read_shape_attributes(frames) == parse_caption(row["caption"]), row


@pytest.mark.parametrize("size", [64, 32])
def test_reads_every_combination_through_blur_and_noise(size):
    g = torch.Generator().manual_seed(0)
    for i, combo in enumerate(COMBINATIONS):
        video = _blur(_to_float(_clip(combo, seed=i, size=size)), sigma=1.5 * size / 64)
        video = (video + 0.05 * torch.randn(video.shape, generator=g)).clamp(-1, 1)
        assert read_shape_attributes(video) == combo


def test_wrong_videos_read_wrong():
    static = np.repeat(_clip(("green", "circle", "left"))[:1], FRAMES, axis=0)
    assert read_shape_attributes(static) == ("green", "circle", "static")
    recoloured = _clip(("red", "triangle", "up")).copy()
    recoloured[recoloured.any(-1)] = PALETTE["blue"]
    assert read_shape_attributes(recoloured) == ("blue", "triangle", "up")
    reversed_clip = _clip(("yellow", "square", "down"))[::-1]
    assert read_shape_attributes(reversed_clip) == ("yellow", "square", "up")
    empty = np.zeros((FRAMES, SIZE, SIZE, 3), np.uint8)
    assert read_shape_attributes(empty) == ("none", "none", "none")


def test_prompt_accuracy_counts_exact_fractions():
    truth = [("red", "circle", "left"), ("blue", "square", "up"), ("purple", "triangle", "down")] * 2
    prompts = [caption(*c) for c in truth]
    prompts[1] = caption("green", "square", "up")  # colour wrong
    prompts[2] = caption("purple", "circle", "right")  # shape and direction wrong
    prompts[5] = caption("purple", "triangle", "up")  # direction wrong
    videos = torch.stack([_to_float(_clip(c, seed=i)) for i, c in enumerate(truth)])
    metric = PromptAccuracy()
    metric.update(videos[:4], prompts[:4])
    metric.update(videos[4:], prompts[4:])
    got = {k: v.item() for k, v in metric.compute().items()}
    assert got == pytest.approx({"colour": 5 / 6, "shape": 5 / 6, "direction": 4 / 6, "all": 3 / 6})
    metric.reset()
    metric.update(videos[:1], prompts[:1])
    assert metric.compute()["all"].item() == 1.0
    with pytest.raises(ValueError, match="not a shapes caption"):
        metric.update(videos[:1], ["a dog running"])


def test_openvid_dataset_reads_the_csv_and_clips_keep_their_attributes(dataset):
    root, csv_path, rows = dataset
    data = OpenVidDataset(csv_path, root / "videos", num_frames=8, stride=2, resolution=32)
    assert len(data) == len(rows)
    for i in range(0, len(data), 5):
        item = data[i]
        assert item["pixels"].shape == (3, 8, 32, 32)
        assert item["captions"] == rows[i]["caption"]
        assert read_shape_attributes(item["pixels"]) == parse_caption(item["captions"]), rows[i]


def test_writing_again_keeps_complete_files_and_fills_in_missing_ones(tmp_path, capsys):
    csv_path = main([str(tmp_path), "--num-videos", "3", "--num-frames", "4", "--size", "32"])
    assert "wrote 3 videos" in capsys.readouterr().out
    videos = sorted((tmp_path / "videos").iterdir())
    assert [p.name for p in videos] == ["00000.mp4", "00001.mp4", "00002.mp4"]
    stamps = {p.name: p.stat().st_mtime_ns for p in videos}
    videos[1].unlink()
    assert write_shapes_dataset(tmp_path, 3, num_frames=4, size=32) == csv_path
    assert {p.name: p.stat().st_mtime_ns for p in videos if p.name != "00001.mp4"} == {
        k: v for k, v in stamps.items() if k != "00001.mp4"
    }
    assert decode_all_frames(videos[1]).shape == (4, 32, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes.csv", "videos"]  # no temp files left
