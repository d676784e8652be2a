"""Motion faithfulness: real shapes clips pass, hand-made broken clips fail the metric aimed at them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avdm.data.shapes import COLOURS, COMBINATIONS, PALETTE, render_clip, write_shapes_dataset
from avdm.evaluate import load_videos
from avdm.metrics.motion import RATES, MotionFaithfulness, judge, path_deviation, read_track


def _real(count: int, seed: int) -> np.ndarray:
    """``count`` rendered clips, uint8 ``(N, 8, 32, 32, 3)``, cycling through every caption."""
    combos = [COMBINATIONS[i % len(COMBINATIONS)] for i in range(count)]
    return np.stack([render_clip(*c, 8, 32, np.random.default_rng([seed, i])) for i, c in enumerate(combos)])


def _as_float(clips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def test_real_clips_are_all_faithful_also_after_video_coding(tmp_path):
    metric = MotionFaithfulness()
    metric.update(_as_float(_real(120, seed=5)))
    # The evaluation reads mp4 files: the codec's blur and bleed must not break a real clip either.
    csv_path = write_shapes_dataset(tmp_path, 60, num_frames=8, size=32, seed=6)
    metric.update(load_videos(csv_path.parent / "videos", 8, 32)[1])
    assert {k: float(v) for k, v in metric.compute().items()} == dict.fromkeys(RATES, 1.0)


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    return _real(12, seed=9)


def _rates(videos: np.ndarray) -> dict[str, float]:
    metric = MotionFaithfulness()
    metric.update(_as_float(videos))
    return {k: float(v) for k, v in metric.compute().items()}


def test_a_teleport_breaks_smoothness_only(clips):
    broken = clips.copy()
    broken[:, 5] = clips[:, 0]  # frame 5 shows the object back at its start
    assert _rates(broken) == {"persistence": 1.0, "identity": 1.0, "smoothness": 0.0, "faithful": 0.0}


def test_a_colour_change_mid_clip_breaks_identity_only(clips):
    broken = clips.astype(np.float32)
    for i in range(len(clips)):
        colour = COMBINATIONS[i % len(COMBINATIONS)][0]
        other = np.array(PALETTE[COLOURS[(COLOURS.index(colour) + 1) % len(COLOURS)]], np.float32)
        late = broken[i, 4:]  # frames 4-7: the same coverage, another palette colour
        coverage = late.max(axis=-1, keepdims=True) / max(PALETTE[colour])
        broken[i, 4:] = coverage * other
    rates = _rates(broken.round().clip(0, 255).astype(np.uint8))
    assert rates == {"persistence": 1.0, "identity": 0.0, "smoothness": 1.0, "faithful": 0.0}


def test_a_vanishing_frame_breaks_persistence(clips):
    broken = clips.copy()
    broken[:, 3] = 0  # one black frame
    assert _rates(broken)["persistence"] == 0.0 and _rates(broken)["faithful"] == 0.0


def test_a_shape_that_changes_breaks_identity():
    rng = np.random.default_rng(0)
    circle = render_clip("red", "circle", "left", 8, 32, rng)
    rng = np.random.default_rng(0)
    square = render_clip("red", "square", "left", 8, 32, rng)  # same draws: the same path
    morph = np.concatenate([circle[:4], square[4:]])
    assert judge(read_track(morph))["identity"] is False
    assert judge(read_track(circle))["identity"] is True


def test_track_reads_the_path_in_pixels():
    clip = render_clip("blue", "square", "right", 8, 32, np.random.default_rng(3))
    track = read_track(clip)
    xs = track.centroids[:, 1]
    assert track.present.all() and (np.diff(xs) > 0).all(), "the square moves right"
    assert path_deviation(track.centroids) < 0.3 and track.side == 32
    assert path_deviation(np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])) == pytest.approx(0.0, abs=1e-9)
    assert path_deviation(np.array([[0.0, 0.0], [0.0, 3.0], [0.0, 3.0]])) > 0.5


def test_training_samples_are_scored_for_shapes_captions(clips):
    from avdm.data.shapes import caption
    from avdm.training.callbacks.samples import shapes_sample_scores

    prompts = [caption(*COMBINATIONS[i % len(COMBINATIONS)]) for i in range(len(clips))]
    real = shapes_sample_scores(_as_float(clips), prompts)
    assert real["prompt_accuracy_all"] == 1.0 and real["motion_faithful"] == 1.0
    broken = clips.copy()
    broken[:6, 3] = 0
    scores = shapes_sample_scores(_as_float(broken), prompts)
    assert scores["motion_persistence"] == 0.5 and scores["motion_faithful"] == 0.5
    assert shapes_sample_scores(_as_float(clips), ["a dog running"] * len(clips)) == {}
