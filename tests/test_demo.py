"""The README's main job (avdm2_shapes on the shipped teacher) and the results table of `make demo-eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from avdm.compare import compare, shapes_prompts
from avdm.config import asset_path


def test_main_job_writes_checkpoints_samples_metrics_and_feeds_the_results_table(tmp_path):
    env = {"OMP_NUM_THREADS": "2", **os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "avdm.train",
            "+experiment=avdm2_shapes",
            "trainer.max_steps=2",
            "hydra.run.dir=run",
            "data.num_videos=12",
            "data.root=data",
            "callbacks.diagnostics.teacher_steps=4",  # the reference teacher in 4 steps, not 25
            "callbacks.diagnostics.samples_per_prompt=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert str(run) in result.stdout + result.stderr, "the job ends by printing where its outputs are"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["generator_steps"] == 2 and metrics["critic_steps"] == 4
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("step_*.mp4")), "an mp4 grid of samples"
    assert list((run / "samples").glob("step_*.png")), "and its contact sheet beside it"
    for key in ("diag/pixel/diversity", "diag/teacher/pixel/diversity", "diag/ratio/pixel/temporal_change",
                "diag/pixel/saturation", "diag/grad_share/sdm", "diag/critic/gan/logit_gap"):  # fmt: skip
        assert 0 <= metrics[key] < 1e6, key
    assert metrics["collapse_alarms"] == [], "the main job's start is no collapse"
    for name in ("losses", "diagnostics", "learning_rates"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 5000, name
    import csv

    with (run / "csv" / "metrics.csv").open() as f:
        logged = [row for row in csv.DictReader(f) if row.get("samples/motion_faithful")]
    assert logged and 0.0 <= float(logged[-1]["samples/prompt_accuracy_colour"]) <= 1.0, "samples are scored"
    assert len(list((tmp_path / "data" / "videos").glob("*.mp4"))) == 12, "the data module wrote the clips"

    rows = compare(
        [("2 steps", str(run / "checkpoints" / "last.ckpt"))],
        asset_path("shapes_teacher"),
        tmp_path / "table",
        teacher_steps=6,
        prompts=shapes_prompts(1)[::3],  # 20 of the 60 captions: every colour, shape and direction
    )
    assert [r["nfe"] for r in rows] == [12, 8, 4, None]
    assert rows[-1]["label"] == "real clips (held out)" and rows[-1]["prompt_accuracy_all"] == 1.0
    assert all(r["num_generated"] == 20 for r in rows)
    assert all(rows[-1]["fvd"] < r["fvd"] for r in rows[:-1]), "real clips are closest to the reference"
    table = (tmp_path / "table" / "results.md").read_text()
    assert rows[0]["fvd_extractor"] in table and table.count("\n") == 2 + len(rows)
    assert Path(tmp_path / "table" / "row2" / "captions.csv").is_file()
    from PIL import Image

    with Image.open(tmp_path / "table" / "frames.png") as figure:  # 4 directions x 3 runs x 8 frames
        assert figure.width > 8 * 64 and figure.height > 4 * 3 * 64
