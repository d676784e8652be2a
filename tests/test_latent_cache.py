"""Latent cache: what the encoders give, resumable atomic writes, bad files dropped, datamodule, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from avdm.config import CONFIG_DIR
from avdm.data.latent_cache import (
    LatentCacheDataModule,
    LatentCacheDataset,
    skipped_counts,
    write_latent_cache,
)
from avdm.data.openvid_folder import OpenVidDataset
from avdm.data.shard_store import INDEX
from avdm.errors import AvdmUserError
from avdm.models.families.animatediff import build_animatediff
from avdm.models.vae import encode_pixels
from tests.video_fixtures import make_bad_videos, make_video, write_csv

CLIP = {"num_frames": 8, "stride": 2, "resolution": 32}  # the tiny model's 8 frames of 32x32 pixels
LAYOUT = {"shard_size": 3, "batch_size": 2}  # 10 CSV rows -> shards of items [0,3) [3,6) [6,9) [9,10)
BAD_FILES = ("missing.mp4", "empty.mp4", "truncated.mp4", "audio_only.mp4", "short.mp4")
BAD_REASONS = {"missing": 1, "empty": 1, "corrupt": 1, "no_video_stream": 1, "too_short": 1}


def _model_config() -> dict[str, Any]:
    """``conf/model/animatediff_tiny.yaml`` as the CLI sees it: latents (4, 8, 16, 16), text (B, 16, 32)."""
    return OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "model" / "animatediff_tiny.yaml"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Any]:
    """5 good videos interleaved with the 5 bad kinds: rows 0, 2, 4, 6, 8 are good."""
    folder = tmp_path_factory.mktemp("videos")
    good = [make_video(folder / f"good{i}.mp4", frames=16) for i in range(5)]
    bad = list(make_bad_videos(folder, good[0]))
    rows = [row for i in range(5) for row in ((good[i].name, f"clip number {i}"), (bad[i], "a bad one"))]
    return {"csv": write_csv(folder / "openvid.csv", rows), "video_dir": folder, "rows": rows}


def _dataset(data: dict[str, Any], **overrides: Any) -> OpenVidDataset:
    return OpenVidDataset(data["csv"], data["video_dir"], **{**CLIP, **overrides})


@pytest.fixture(scope="module")
def models():
    config = _model_config()
    config.pop("_target_")
    return build_animatediff(**config)


@pytest.fixture(scope="module")
def full_root(data, models, tmp_path_factory) -> Path:
    """An uninterrupted write of the whole CSV."""
    root = tmp_path_factory.mktemp("full")
    write_latent_cache(root, _dataset(data), models, model_config=_model_config(), **LAYOUT)
    return root


def _files(root: Path) -> dict[str, tuple[dict[str, str], dict[str, torch.Tensor]]]:
    files = {}
    for path in sorted(root.glob("shard-*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            files[path.name] = (f.metadata(), load_file(path))
    return files


def test_cache_holds_the_encoders_outputs_of_the_good_clips(data, models, full_root):
    files = _files(full_root)
    assert list(files) == [f"shard-{i:05d}.safetensors" for i in range(4)]
    reference = _dataset(data)
    for metadata, tensors in files.values():
        sources, captions = json.loads(metadata["sources"]), json.loads(metadata["captions"])
        assert len(sources) == len(captions) == tensors["latents"].shape[0] == tensors["text"].shape[0]
        if not sources:
            continue
        assert captions == [data["rows"][i][1] for i in sources]
        pixels = torch.stack([reference[i]["pixels"] for i in sources])
        expected = encode_pixels(models.vae, pixels, sample=False)
        assert tensors["latents"].shape[1:] == (4, 8, 16, 16)
        torch.testing.assert_close(tensors["latents"], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tensors["text"], models.prompt_encoder(captions), rtol=1e-5, atol=1e-5)


def test_bad_files_are_dropped_and_counted(full_root):
    index = json.loads((full_root / INDEX).read_text())
    assert [e["sources"] for e in index["shards"]] == [[0, 2], [4], [6, 8], []]
    assert index["num_clips"] == 5 and index["num_skipped"] == 5
    assert skipped_counts(index) == BAD_REASONS
    assert {s["file"] for e in index["shards"] for s in e["skipped"]} == set(BAD_FILES)
    assert index["latent_shape"] == [4, 8, 16, 16] and index["text_shape"] == [16, 32]
    assert index["source"]["num_frames"] == 8 and index["source"]["length"] == 10


def test_limited_run_then_resume_writes_the_same_files(data, models, full_root, tmp_path):
    first = write_latent_cache(
        tmp_path, _dataset(data), models, limit=4, model_config=_model_config(), **LAYOUT
    )
    assert [(e["id"], e["end"]) for e in first["shards"]] == [(0, 3), (1, 4)]  # shard 1 cut short
    assert first["num_clips"] == 2  # items 0 and 2; 1 and 3 are bad
    written: list[int] = []
    write_latent_cache(
        tmp_path,
        _dataset(data),
        models,
        model_config=_model_config(),
        on_shard=lambda e: written.append(e["id"]),
        **LAYOUT,
    )
    assert written == [1, 2, 3]  # the finished shard is skipped, the short one rewritten whole
    assert json.loads((tmp_path / INDEX).read_text()) == json.loads((full_root / INDEX).read_text())
    mine, full = _files(tmp_path), _files(full_root)
    assert mine.keys() == full.keys()
    for name, (metadata, tensors) in full.items():
        assert mine[name][0] == metadata, name
        assert all(torch.equal(mine[name][1][k], t) for k, t in tensors.items()), name
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_resume_with_another_model_config_raises(data, models, full_root):
    before = (full_root / INDEX).read_text()
    other = {**_model_config(), "seed": 1}
    with pytest.raises(AvdmUserError, match="different model.*seed: 0 -> 1"):
        write_latent_cache(full_root, _dataset(data), models, model_config=other, **LAYOUT)
    with pytest.raises(AvdmUserError, match="different source"):
        write_latent_cache(
            full_root, _dataset(data, stride=1), models, model_config=_model_config(), **LAYOUT
        )
    assert (full_root / INDEX).read_text() == before


def test_clips_that_do_not_fit_the_model_raise(data, models, tmp_path):
    with pytest.raises(AvdmUserError, match=r"latents \[4, 4, 16, 16\].*\[4, 8, 16, 16\]"):
        write_latent_cache(tmp_path, _dataset(data, num_frames=4), models, limit=1, shard_size=1)


def test_datamodule_batches(full_root):
    assert len(LatentCacheDataset(full_root)) == 5
    dm = LatentCacheDataModule(str(full_root), batch_size=2, num_workers=0, seed=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 5 clips, incomplete batches dropped
    for batch in batches:
        assert set(batch) == {"latents", "text", "captions"}
        assert batch["latents"].shape == (2, 4, 8, 16, 16) and batch["latents"].dtype == torch.float32
        assert batch["text"].shape == (2, 16, 32)
        assert len(batch["captions"]) == 2 and all(c.startswith("clip number") for c in batch["captions"])
    captions = [c for batch in batches for c in batch["captions"]]
    assert len(set(captions)) == 4  # one shuffled epoch: no clip twice


def test_datamodule_rejects_a_missing_cache(tmp_path):
    with pytest.raises(AvdmUserError, match="no latent cache index"):
        LatentCacheDataModule(str(tmp_path))


def test_cli_writes_a_cache(data, full_root, tmp_path):
    root = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [f"data.csv={data['csv']}", f"data.video_dir={data['video_dir']}", "data.stride=2", f"root={root}"]
    result = subprocess.run(
        [sys.executable, "-m", "avdm.precompute", *args, "shard_size=3", "batch_size=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "cached 5 clips" in result.stdout and "skipped 5 bad files" in result.stdout
    cli, full = LatentCacheDataset(root), LatentCacheDataset(full_root)
    assert len(cli) == 5
    for i in range(5):  # the CLI's model is the same tiny teacher (seed 0): the same latents
        assert cli[i]["captions"] == full[i]["captions"]
        torch.testing.assert_close(cli[i]["latents"], full[i]["latents"])


def test_cli_without_data_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "avdm.precompute", f"root={tmp_path / 'cache'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "avdm: error: data.csv: not set; set data.csv=FILE.csv data.video_dir=MP4_FOLDER"
    ]
    assert not (tmp_path / "cache").exists()
