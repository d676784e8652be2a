"""OpenVid data: the CSV dataset's bad-file policies, tar shards across ranks and workers, resume,
the datamodule's batches through a real loader, and the check CLI."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from video_fixtures import make_bad_videos, make_truncated, make_video, write_csv, write_shard

from avdm.data.openvid import OpenVidDataModule, ShardLoader
from avdm.data.openvid_folder import OpenVidDataset
from avdm.data.openvid_shards import OpenVidShardDataset
from avdm.data.openvid_sources import DataSourceError
from avdm.data.resumable import ResumableDataLoader
from avdm.data.video_io import REASONS
from avdm.errors import AvdmUserError, ConfigError

CLIP = {"num_frames": 4, "stride": 2, "resolution": 16}  # a clip needs 7 source frames
GOOD = ["good0.mp4", "good1.mp4", "good2.mp4"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def openvid(tmp_path_factory):
    """A CSV of 3 good videos and one of every bad kind, in the order good, bad, good, bad, ..."""
    root = tmp_path_factory.mktemp("openvid")
    videos = root / "videos"
    videos.mkdir()
    for i, name in enumerate(GOOD):
        make_video(videos / name, frames=12 + 4 * i, width=32, height=24, gop=4)
    bad = make_bad_videos(videos, videos / GOOD[0])
    names = [GOOD[0], *list(bad)[:2], GOOD[1], *list(bad)[2:], GOOD[2]]
    csv = write_csv(root / "OpenVid-1M.csv", [(name, f"caption of {name}") for name in names])
    return {"csv": csv, "videos": videos, "bad": bad, "names": names}


def _expected_counts(bad: dict[str, str]) -> dict[str, int]:
    return {reason: sum(r == reason for r in bad.values()) for reason in REASONS}


def test_skip_policy_replaces_bad_videos_and_counts_them(openvid, caplog):
    data = OpenVidDataset(openvid["csv"], openvid["videos"], **CLIP, on_bad_video="skip")
    assert len(data) == 8
    with caplog.at_level(logging.WARNING, logger="avdm.data.openvid"):
        items = [data[i] for i in range(len(data))] + [data[i] for i in range(len(data))]
    for item in items:
        assert item["pixels"].shape == (3, 4, 16, 16)
        assert item["captions"] in {f"caption of {name}" for name in GOOD}
    good_positions = [i for i, name in enumerate(openvid["names"]) if name in GOOD]
    assert [items[i]["captions"] for i in good_positions] == [f"caption of {name}" for name in GOOD]
    assert data.bad_videos.counts() == _expected_counts(openvid["bad"])
    for name, reason in openvid["bad"].items():
        logged = [r for r in caplog.records if name in r.getMessage()]
        assert len(logged) == 1 and reason in logged[0].getMessage()  # once per file, with its reason
    # The same item every time, in a fresh dataset too (the replacement draw is seeded by the index).
    again = OpenVidDataset(openvid["csv"], openvid["videos"], **CLIP, on_bad_video="skip")
    for i in range(len(data)):
        assert torch.equal(again[i]["pixels"], items[i]["pixels"])
        assert again[i]["captions"] == items[i]["captions"]


@pytest.mark.parametrize("policy", ["loop", "pad"])
def test_loop_and_pad_repair_short_videos_only(openvid, policy):
    data = OpenVidDataset(
        openvid["csv"], openvid["videos"], num_frames=4, stride=3, resolution=16, on_bad_video=policy
    )
    short = data[openvid["names"].index("short.mp4")]  # 6 frames; the clip wants 0, 3, 6, 9
    assert short["captions"] == "caption of short.mp4"
    frames = short["pixels"].unbind(1)
    if policy == "loop":  # 0, 3, 0, 3
        assert torch.equal(frames[2], frames[0]) and torch.equal(frames[3], frames[1])
    else:  # 0, 3, 5, 5
        assert torch.equal(frames[3], frames[2]) and not torch.equal(frames[2], frames[1])
    assert short["bad_videos"] == [("short.mp4", "too_short", short["bad_videos"][0][2])]
    missing = data[openvid["names"].index("missing.mp4")]
    assert missing["captions"] != "caption of missing.mp4"  # other bad kinds are still skipped
    for i in range(len(data)):
        data[i]
    assert data.bad_videos.counts() == _expected_counts(openvid["bad"])


def test_missing_paths_and_bad_options_are_user_errors(openvid, tmp_path):
    with pytest.raises(DataSourceError) as err:
        OpenVidDataset(tmp_path / "nope.csv", openvid["videos"])
    assert isinstance(err.value, AvdmUserError)
    assert str(tmp_path / "nope.csv") in str(err.value) and "data.csv" in str(err.value)
    with pytest.raises(DataSourceError, match="data.video_dir") as err:
        OpenVidDataset(openvid["csv"], tmp_path / "novideos")
    assert str(tmp_path / "novideos") in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "bad.csv").write_text("file,text\na.mp4,hi\n")
    with pytest.raises(DataSourceError, match="caption"):
        OpenVidDataset(tmp_path / "bad.csv", openvid["videos"])
    with pytest.raises(ConfigError, match="skip, loop, pad"):
        OpenVidDataset(openvid["csv"], openvid["videos"], on_bad_video="ignore")
    with pytest.raises(ConfigError, match="exactly one"):
        OpenVidDataModule(csv=str(openvid["csv"]), video_dir=str(openvid["videos"]), shards="*.tar")
    module = OpenVidDataModule(csv=str(tmp_path / "nope.csv"), video_dir=str(openvid["videos"]))
    with pytest.raises(DataSourceError, match="data.csv"):
        module.setup("fit")


@pytest.mark.parametrize("workers", [0, 2])
def test_datamodule_batches_through_the_resumable_loader(openvid, workers):
    module = OpenVidDataModule(
        csv=str(openvid["csv"]),
        video_dir=str(openvid["videos"]),
        **CLIP,
        batch_size=2,
        num_workers=workers,
        seed=3,
    )
    assert module.bad_video_counts() == dict.fromkeys(REASONS, 0)
    module.setup("fit")
    loader = module.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    batches = list(loader)
    assert len(batches) == 4 and loader.state_dict() == {"epoch": 1, "batches": 0}
    for batch in batches:
        assert set(batch) == {"pixels", "captions"}
        assert batch["pixels"].shape == (2, 3, 4, 16, 16) and batch["pixels"].dtype == torch.float32
        assert -1 <= batch["pixels"].min() and batch["pixels"].max() <= 1
        assert len(batch["captions"]) == 2 and all(isinstance(c, str) for c in batch["captions"])
    # Every bad file was met in the epoch, in the workers or here: the main process has the counts.
    assert module.bad_video_counts() == _expected_counts(openvid["bad"])


# --- tar shards -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """6 shards x 3 samples; each caption is its sample's key."""
    root = tmp_path_factory.mktemp("shards")
    video = make_video(root / "v.mp4", frames=9, width=32, height=24, gop=3).read_bytes()
    for s in range(6):
        write_shard(root / f"shard-{s:03d}.tar", {f"s{s}_{j}": (video, f"s{s}_{j}") for j in range(3)})
    return root


def _captions(batches):
    return [c for batch in batches for c in batch["captions"]]


ALL = {f"s{s}_{j}" for s in range(6) for j in range(3)}


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 0), (1, 2), (3, 2)])
def test_shards_partition_over_ranks_and_workers(shards, world, workers):
    seen = []
    for rank in range(world):
        data = OpenVidShardDataset(str(shards / "*.tar"), **CLIP, rank=rank, world_size=world)
        seen += _captions(ShardLoader(data, batch_size=1, num_workers=workers))
    assert len(seen) == len(set(seen)) and set(seen) == ALL


def test_shards_are_deterministic_and_reshuffled_per_epoch(shards):
    def epochs(seed):
        data = OpenVidShardDataset(sorted(map(str, shards.glob("*.tar"))), **CLIP, seed=seed)
        first = [(item["captions"], item["pixels"]) for item in data]
        return first, [item["captions"] for item in data]

    (first, second), (again, _) = epochs(0), epochs(0)
    assert [c for c, _ in first] == [c for c, _ in again]
    assert all(torch.equal(p, q) for (_, p), (_, q) in zip(first, again))
    assert second != [c for c, _ in first] and set(second) == ALL
    assert [c for c, _ in epochs(1)[0]] != [c for c, _ in first]


def test_shard_resume_yields_exactly_the_rest(shards):
    spec = str(shards / "*.tar")
    full = [item["captions"] for item in OpenVidShardDataset(spec, **CLIP, seed=5)]
    run = OpenVidShardDataset(spec, **CLIP, seed=5)
    it = iter(run)
    consumed = [next(it)["captions"] for _ in range(7)]
    state = run.state_dict()
    assert state["epoch"] == 0 and len(state["positions"]) == 1 and state["positions"][0][2] >= 1
    resumed = OpenVidShardDataset(spec, **CLIP, seed=5)
    resumed.load_state_dict(state)
    assert consumed + [item["captions"] for item in resumed] == full
    assert resumed.epoch == 1 and resumed.state_dict()["positions"] == []


def test_shard_resume_across_ranks_and_workers(shards):
    spec = str(shards / "*.tar")
    loaders = [
        ShardLoader(OpenVidShardDataset(spec, **CLIP, rank=r, world_size=2), batch_size=1, num_workers=2)
        for r in range(2)
    ]
    consumed = []
    for loader, n in zip(loaders, (3, 2)):
        it = iter(loader)
        consumed += _captions(next(it) for _ in range(n))
        del it
    # Under DDP ShardLoader.state_dict gathers every rank's readers; here we merge by hand.
    states = [loader.state_dict() for loader in loaders]
    merged = {**states[0], "positions": states[0]["positions"] + states[1]["positions"]}
    assert merged["num_readers"] == 4
    rest = []
    for r in range(2):
        loader = ShardLoader(
            OpenVidShardDataset(spec, **CLIP, rank=r, world_size=2), batch_size=1, num_workers=2
        )
        loader.load_state_dict(merged)
        rest += _captions(loader)
    assert len(consumed + rest) == len(set(consumed + rest)) and set(consumed + rest) == ALL
    fewer = OpenVidShardDataset(spec, **CLIP, rank=0, world_size=1)
    fewer.load_state_dict(merged)
    with pytest.raises(ConfigError, match="4 readers"):
        next(iter(fewer))


def test_bad_shard_samples_are_skipped_and_counted(shards, tmp_path):
    good = (shards / "v.mp4").read_bytes()
    cut = make_truncated(tmp_path / "cut.mp4", shards / "v.mp4").read_bytes()
    short = make_video(tmp_path / "short.mp4", frames=5, width=32, height=24).read_bytes()
    write_shard(
        tmp_path / "bad.tar",
        {
            "a": (good, "a"),
            "b": (cut, "b"),
            "c": (None, "c"),
            "d": (b"", "d"),
            "e": (short, "e"),
            "f": (good, None),
        },
    )
    data = OpenVidShardDataset(str(tmp_path / "bad.tar"), **CLIP)
    assert [item["captions"] for item in data] == ["a", ""]
    assert data.bad_videos.counts() == {
        "missing": 1,
        "empty": 1,
        "corrupt": 1,
        "no_video_stream": 0,
        "too_short": 1,
    }
    padded = OpenVidShardDataset(str(tmp_path / "bad.tar"), **CLIP, on_bad_video="pad")
    assert [item["captions"] for item in padded] == ["a", "e", ""]

    module = OpenVidDataModule(shards=[str(tmp_path / "bad.tar")], **CLIP, batch_size=1, num_workers=1)
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert [b["captions"] for b in batches] == [["a"], [""]] and set(batches[0]) == {"pixels", "captions"}
    assert module.bad_video_counts()["corrupt"] == 1 and sum(module.bad_video_counts().values()) == 4


# --- the check CLI ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_check_cli_lists_unusable_videos_and_fails_cleanly_without_csv(openvid, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "avdm.data.check"]
    args = [str(openvid["csv"]), str(openvid["videos"]), "--num-frames", "4", "--stride", "2"]
    # Both runs at once: each pays the import of lightning.
    unusable = tmp_path / "unusable.csv"
    unusable.write_text("video,caption\n" + "".join(f"{name},a clip\n" for name in openvid["bad"]))
    runs = [
        subprocess.Popen(cmd + a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for a in (args, [str(tmp_path / "nope.csv"), str(openvid["videos"])], [str(unusable), *args[1:]])
    ]
    (ok_out, ok_err), (bad_out, bad_err), (none_out, none_err) = (
        run.communicate(timeout=120) for run in runs
    )
    assert runs[2].returncode == 1 and "usable: 0" in none_out.splitlines(), none_err
    assert none_err.strip() == f"python -m avdm.data.check: error: no usable video in {unusable}"
    assert runs[0].returncode == 0, ok_err
    lines = ok_out.splitlines()
    assert (
        "usable: 3" in lines
        and "unusable: 5 (corrupt 1, empty 1, missing 1, no_video_stream 1, too_short 1)" in lines
    )
    for name, reason in openvid["bad"].items():
        assert f"  {name}: {reason}" in lines
    assert not any(name in ok_out for name in GOOD)
    assert runs[1].returncode == 2 and bad_out == ""
    assert bad_err.count("\n") == 1 and "Traceback" not in bad_err and str(tmp_path / "nope.csv") in bad_err
