"""``python -m avdm.evaluate`` on folders of real mp4 files with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avdm.data.shapes import COMBINATIONS, caption, render_clip, write_video
from avdm.evaluate import main, temporal_consistency

FRAMES, SIZE = 8, 32


def _write_set(folder, combos, seed, static_noise=False):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, combo in enumerate(combos):
        if static_noise:
            frames = np.repeat(rng.integers(0, 255, (1, SIZE, SIZE, 3), dtype=np.uint8), FRAMES, axis=0)
        else:
            frames = render_clip(*combo, num_frames=FRAMES, size=SIZE, rng=rng)
        write_video(folder / f"{i:02d}_{caption(*combo).replace(' ', '_')}.mp4", frames, fps=8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    combos = COMBINATIONS[::5]  # 12 of the 60 combinations
    _write_set(root / "reference", combos, seed=0)
    _write_set(root / "good", combos, seed=1)
    _write_set(root / "noise", combos, seed=2, static_noise=True)
    return root


def _run(folders, generated):
    out = folders / f"out_{generated}"
    main(
        [
            "--generated",
            str(folders / generated),
            "--reference",
            str(folders / "reference"),
            "--num-frames",
            str(FRAMES),
            "--resolution",
            str(SIZE),
            "--out",
            str(out),
        ]
    )
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_a_good_set_reads_its_prompts_and_is_closer_to_the_reference(folders):
    good, table = _run(folders, "good")
    noise, _ = _run(folders, "noise")
    assert good["num_generated"] == 12 and good["fvd_extractor"].startswith("fallback")
    assert good["prompt_accuracy_all"] == 1.0
    assert noise["prompt_accuracy_all"] < 0.5
    assert noise["fvd"] > 2 * good["fvd"]
    assert noise["temporal_consistency"] == pytest.approx(1.0, abs=1e-3)  # static frames
    assert good["temporal_consistency"] < noise["temporal_consistency"]
    assert "fvd_extractor" in table and "prompt_accuracy_all" in table


def test_temporal_consistency_drops_with_flicker():
    import torch

    drift = torch.linspace(0, 0.3, 8).view(1, 1, 8, 1, 1) * torch.randn(1, 3, 1, 8, 8)
    smooth = torch.randn(1, 3, 1, 8, 8) + drift
    flicker = torch.randn(1, 3, 8, 8, 8)
    assert temporal_consistency(smooth) > 0.99 > 0.5 > temporal_consistency(flicker)


def test_missing_folder_is_one_line(folders, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--generated", str(folders / "nope"), "--reference", str(folders / "reference")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("avdm: error: --generated")
