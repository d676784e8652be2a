"""SynVid: recording the real sampler, atomic resumable writes, key points at load, AccVideo training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from avdm.config import CONFIG_DIR, validate
from avdm.data.shard_store import INDEX
from avdm.data.synvid import SynVidDataModule, SynVidDataset, select_key_steps
from avdm.data.synvid_writing import SamplerSettings, read_prompts, record_trajectory, write_synvid
from avdm.errors import AvdmUserError, ConfigError
from avdm.losses import TrajectoryRegressionLoss
from avdm.losses.base import StepContext, TeacherBank
from avdm.models.denoiser import trainable_copy
from avdm.models.families.wan import build_wan
from avdm.models.generator import FewStepGenerator
from avdm.models.sampling import make_scheduler, sample_teacher

PROMPTS = [
    "a red ball moving left",
    "a blue box moving up",
    "a green circle spinning",
    "a yellow square on a white background",
    "a purple triangle bouncing",
]
TEACHER_CONFIG = {"name": "tiny wan", "num_frames": 2, "resolution": 16, "seed": 0}
SETTINGS = SamplerSettings(num_steps=4, guidance_scale=3.0, negative_prompt="", seed=7)
LAYOUT = {"shard_size": 2, "batch_size": 2}


class Killed(Exception):
    """Stands in for the process dying after a shard."""


@pytest.fixture(scope="module")
def wan():
    """A tiny Wan teacher: latents (4, 2, 8, 8), text (B, 16, 32)."""
    return build_wan(source="tiny", num_frames=2, resolution=16, shift=3.0)


@pytest.fixture(scope="module")
def fresh_root(wan, tmp_path_factory):
    """An uninterrupted write of all prompts."""
    root = tmp_path_factory.mktemp("fresh")
    write_synvid(root, PROMPTS, wan, SETTINGS, TEACHER_CONFIG, **LAYOUT)
    return root


def _shards(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted(root.glob("shard-*.safetensors"))}


def _assert_same_roots(a: Path, b: Path) -> None:
    index_a, index_b = (json.loads((r / INDEX).read_text()) for r in (a, b))
    assert index_a == index_b
    shards_a, shards_b = _shards(a), _shards(b)
    assert shards_a.keys() == shards_b.keys()
    for name, tensors in shards_a.items():
        assert tensors.keys() == shards_b[name].keys()
        assert all(torch.equal(t, shards_b[name][k]) for k, t in tensors.items()), name


# --- the recorder follows the real sampler -------------------------------------------------------
def test_recorded_trajectory_ends_at_sample_teacher_output(wan):
    torch.manual_seed(1)
    z = torch.randn(2, *wan.latent_shape)
    text = wan.prompt_encoder(PROMPTS[:2])
    uncond = wan.prompt_encoder([""]).expand(2, -1, -1)
    traj = record_trajectory(
        wan.video_teacher, make_scheduler("flow_euler", wan.scheduler_config), z, text, uncond, 4, 3.0
    )
    final = sample_teacher(
        wan.video_teacher, make_scheduler("flow_euler", wan.scheduler_config), z, text, uncond, 4, 3.0
    )
    assert traj.latents.shape == (2, 5, *wan.latent_shape)
    assert torch.equal(traj.latents[:, 0], z) and torch.equal(traj.latents[:, -1], final)
    assert traj.t[0] == 1.0 and traj.t[-1] == 0.0 and bool((traj.t[1:] < traj.t[:-1]).all())
    # Each recorded state is the flow Euler step of the one before: x' = x + (t' - t) v_guided.
    with torch.no_grad():
        v = wan.video_teacher(torch.cat([z, z]), torch.ones(4), torch.cat([text, uncond]))
    guided = v[2:] + 3.0 * (v[:2] - v[2:])
    torch.testing.assert_close(traj.latents[:, 1], z + (traj.t[1] - traj.t[0]) * guided)


def test_recorder_rejects_samplers_whose_state_is_not_x_t(wan):
    scheduler = make_scheduler("euler", {})
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="flow_euler or ddim"):
        record_trajectory(
            wan.video_teacher, scheduler, torch.randn(1, *wan.latent_shape), torch.zeros(1, 16, 32)
        )


# --- writing: atomic, resumable, bit-exact ---------------------------------------------------------
def test_fresh_root_layout(fresh_root, wan):
    index = json.loads((fresh_root / INDEX).read_text())
    assert index["num_trajectories"] == len(PROMPTS) and index["latent_shape"] == [4, 2, 8, 8]
    assert [s["id"] for s in index["shards"]] == [0, 1, 2] and [s["count"] for s in index["shards"]] == [
        2,
        2,
        1,
    ]
    assert [p for s in index["shards"] for p in s["prompts"]] == PROMPTS
    assert len(index["timesteps"]) == SETTINGS.num_steps + 1 and index["text_shape"] == [16, 32]
    shard = load_file(fresh_root / "shard-00001.safetensors")
    assert shard["latents"].shape == (2, 5, 4, 2, 8, 8) and shard["text"].shape == (2, 16, 32)
    assert shard["timesteps"].tolist() == [index["timesteps"]] * 2
    # Each prompt's starting noise comes from its own seed, so it does not depend on the batching.
    g = torch.Generator().manual_seed(SETTINGS.seed * 1_000_003 + 3)
    assert torch.equal(shard["latents"][1, 0], torch.randn(wan.latent_shape, generator=g))


def test_killed_write_resumes_to_the_uninterrupted_result(wan, fresh_root, tmp_path):
    def kill_after_first(entry):
        raise Killed(entry["file"])

    with pytest.raises(Killed):
        write_synvid(tmp_path, PROMPTS, wan, SETTINGS, TEACHER_CONFIG, **LAYOUT, on_shard=kill_after_first)
    index = json.loads((tmp_path / INDEX).read_text())
    assert [s["id"] for s in index["shards"]] == [0] and index["num_trajectories"] == 2
    # A kill while writing the next shard leaves a temporary file or a file missing from the index.
    (tmp_path / ".shard-00002.safetensors.tmp-12345").write_bytes(b"half a shard")
    (tmp_path / "shard-00001.safetensors").write_bytes(b"not in the index")
    assert len(SynVidDataset(tmp_path)) == 2  # the partial root is readable: only finished shards

    written = []
    write_synvid(tmp_path, PROMPTS, wan, SETTINGS, TEACHER_CONFIG, **LAYOUT, on_shard=written.append)
    assert [e["id"] for e in written] == [1, 2]  # shard 0 was skipped
    assert not list(tmp_path.glob(".*.tmp-*"))
    _assert_same_roots(tmp_path, fresh_root)

    again = []
    write_synvid(tmp_path, PROMPTS, wan, SETTINGS, TEACHER_CONFIG, **LAYOUT, on_shard=again.append)
    assert again == []
    dataset = SynVidDataset(tmp_path)
    captions = [dataset[i]["captions"] for i in range(len(dataset))]
    assert captions == PROMPTS  # no duplicates, in prompt order


def test_max_shards_and_a_grown_prompt_file_complete_the_short_shard(wan, fresh_root, tmp_path):
    write_synvid(tmp_path, PROMPTS[:3], wan, SETTINGS, TEACHER_CONFIG, **LAYOUT, max_shards=1)
    assert json.loads((tmp_path / INDEX).read_text())["num_trajectories"] == 2
    write_synvid(tmp_path, PROMPTS[:3], wan, SETTINGS, TEACHER_CONFIG, **LAYOUT)
    index = json.loads((tmp_path / INDEX).read_text())
    assert [s["count"] for s in index["shards"]] == [2, 1]
    written = []
    write_synvid(tmp_path, PROMPTS, wan, SETTINGS, TEACHER_CONFIG, **LAYOUT, on_shard=written.append)
    assert [e["id"] for e in written] == [1, 2]  # the short shard 1 is redone with its new prompt
    _assert_same_roots(tmp_path, fresh_root)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"settings": SamplerSettings(num_steps=5, guidance_scale=3.0, seed=7)}, "sampler.num_steps: 4 -> 5"),
        ({"teacher_config": {**TEACHER_CONFIG, "seed": 1}}, "teacher.seed: 0 -> 1"),
        ({"shard_size": 3}, "shard_size=2, not 3"),
        ({"prompts": ["a red ball moving left", "a blue box moving down"]}, "prompt 1 differs"),
    ],
)
def test_resume_with_other_settings_is_a_user_error(wan, tmp_path, change, match):
    write_synvid(tmp_path, PROMPTS[:2], wan, SETTINGS, TEACHER_CONFIG, **LAYOUT)
    args = {
        "prompts": PROMPTS[:2],
        "settings": SETTINGS,
        "teacher_config": TEACHER_CONFIG,
        **LAYOUT,
        **change,
    }
    with pytest.raises(AvdmUserError, match=match):
        write_synvid(
            tmp_path, args.pop("prompts"), wan, args.pop("settings"), args.pop("teacher_config"), **args
        )


def test_resume_accepts_equal_values_of_another_type(wan, tmp_path):
    write_synvid(tmp_path, PROMPTS[:2], wan, SETTINGS, TEACHER_CONFIG, **LAYOUT)
    same = SamplerSettings(num_steps=4, guidance_scale=3, seed=7)  # 3 == 3.0, as a CLI override gives it
    written = []
    write_synvid(
        tmp_path,
        PROMPTS[:2],
        wan,
        same,
        {**TEACHER_CONFIG, "resolution": 16.0},
        **LAYOUT,
        on_shard=written.append,
    )
    assert written == []


def test_prompt_file_reading(tmp_path):
    (tmp_path / "p.txt").write_text("  a red ball \n\n a blue box\n")
    assert read_prompts(tmp_path / "p.txt") == ["a red ball", "a blue box"]
    with pytest.raises(AvdmUserError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(AvdmUserError, match="no SynVid index"):
        SynVidDataset(tmp_path)


# --- reading: key points at load time ---------------------------------------------------------------
def test_key_step_selection():
    assert select_key_steps(50, num_key_points=6) == [0, 10, 20, 30, 40, 50]  # AccVideo's 5 student steps
    assert select_key_steps(4) == [0, 1, 2, 3, 4]
    assert select_key_steps(4, num_key_points=3) == [0, 2, 4]
    assert select_key_steps(4, key_steps=[1, 4]) == [1, 4]
    for bad in ({"key_steps": [0, 5]}, {"key_steps": [2, 2]}, {"key_steps": [3]}, {"num_key_points": 6}):
        with pytest.raises(ConfigError, match="data\\."):
            select_key_steps(4, **bad)
    with pytest.raises(ConfigError, match="exclusive"):
        select_key_steps(4, num_key_points=2, key_steps=[0, 4])


def test_dataset_items_are_the_stored_key_points(fresh_root, wan):
    full, keyed = SynVidDataset(fresh_root), SynVidDataset(fresh_root, key_steps=[0, 2, 4])
    assert len(full) == len(keyed) == len(PROMPTS)
    shard = load_file(fresh_root / "shard-00001.safetensors")
    item, item_k = full[3], keyed[3]
    assert item["captions"] == PROMPTS[3] and item["trajectory"].shape == (5, 4, 2, 8, 8)
    assert torch.equal(item["trajectory"], shard["latents"][1])
    assert torch.equal(item_k["trajectory"], shard["latents"][1, [0, 2, 4]])
    assert torch.equal(item_k["trajectory_t"], shard["timesteps"][1, [0, 2, 4]])
    assert torch.equal(keyed.key_times, item_k["trajectory_t"])
    torch.testing.assert_close(item["text"], wan.prompt_encoder([PROMPTS[3]])[0])
    with pytest.raises(IndexError):
        full[len(PROMPTS)]


def test_datamodule_batches_and_shape_check(fresh_root):
    dm = SynVidDataModule(str(fresh_root), num_key_points=3, batch_size=2, seed=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 5 trajectories, batch 2, incomplete batch dropped
    batch = batches[0]
    assert batch["trajectory"].shape == (2, 3, 4, 2, 8, 8) and batch["trajectory_t"].shape == (2, 3)
    assert batch["text"].shape == (2, 16, 32) and len(batch["captions"]) == 2
    assert set(batch["captions"]) <= set(PROMPTS)
    assert bool((batch["trajectory_t"][:, 1:] < batch["trajectory_t"][:, :-1]).all())
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(latent_shape=(4, 4, 8, 8)))
    with pytest.raises(AvdmUserError, match="\\[4, 2, 8, 8\\] but the model's are \\[4, 4, 8, 8\\]"):
        dm.setup("fit")


# --- AccVideo's losses on SynVid ------------------------------------------------------------------
def _regression(wan, batch):
    student = FewStepGenerator(trainable_copy(wan.video_teacher), (1000, 750, 500, 250))
    ctx = StepContext(
        x0_fake=torch.zeros(1),
        text=batch["text"],
        batch=batch,
        teachers=TeacherBank(wan.video_teacher),
        generator=student,
    )
    torch.manual_seed(0)
    return TrajectoryRegressionLoss().generator_loss(ctx).loss, student


def test_trajectory_regression_on_a_synvid_batch(wan, fresh_root, tmp_path):
    batch = next(
        iter(SynVidDataModule(str(fresh_root), key_steps=[0, 2, 4], batch_size=2).train_dataloader())
    )
    loss, student = _regression(wan, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in student.denoiser.parameters() if p.requires_grad)
    # Without CFG and with consecutive key points, the student (a copy of the teacher) repeats the
    # teacher's Euler step exactly: the data, its times and its text embeddings agree with the loss.
    write_synvid(tmp_path, PROMPTS[:2], wan, SamplerSettings(num_steps=4, guidance_scale=1.0), TEACHER_CONFIG)
    exact = next(iter(SynVidDataModule(str(tmp_path), batch_size=2).train_dataloader()))
    assert _regression(wan, exact)[0] < 1e-10


# --- the AccVideo experiments ------------------------------------------------------------------------
def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_accvideo_experiments_compose_and_validate():
    tiny = _compose("train", "+experiment=accvideo_tiny", "paths.output_dir=/tmp/x")
    validate(tiny)
    assert set(tiny.loss) == {"regression", "gan"}
    assert tiny.model._target_ == "avdm.models.families.wan.build_wan"
    # The ladder is the times of the key points the student learns from: 5 of an 8-step SynVid (shift 3).
    assert list(tiny.module.generator_timesteps) == pytest.approx(
        _key_timesteps(8, 3.0, [0, 2, 4, 6]), abs=1e-3
    )
    real = _compose("train", "+experiment=accvideo", "paths.output_dir=/tmp/x")
    validate(real)
    assert real.model.source == "pretrained" and list(real.data.key_steps) == [0, 10, 20, 30, 40, 50]
    assert len(real.module.generator_timesteps) == len(real.data.key_steps) - 1


def _key_timesteps(num_steps: int, shift: float, keys: list[int]) -> list[float]:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    return [float(scheduler.timesteps[k]) for k in keys]


def test_accvideo_tiny_trains_on_a_synthesized_root(tmp_path, capsys):
    from avdm.synthesize import synthesize
    from avdm.training.fit import fit

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    root = tmp_path / "synvid"
    synth = _compose(
        "synthesize",
        f"prompts={tmp_path / 'prompts.txt'}",
        f"root={root}",
        "sampler.num_steps=4",
        "shard_size=4",
    )
    assert synthesize(synth)["num_trajectories"] == len(PROMPTS)
    cfg = _compose(
        "train",
        "+experiment=accvideo_tiny",
        f"paths.output_dir={tmp_path / 'out'}",
        f"data.root={root}",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "callbacks.samples.every_n_steps=0",
    )
    # The experiment's ladder is an 8-step root's: a 4-step root is refused, naming the ladder it needs.
    ladder = [round(t, 3) for t in _key_timesteps(4, 3.0, [0, 1, 2, 3])]
    with pytest.raises(ConfigError, match=re.escape(f"set module.generator_timesteps={ladder}")):
        fit(cfg)
    cfg.module.generator_timesteps = ladder
    cfg.callbacks.checkpoint.every_n_train_steps = 2
    metrics = fit(cfg)
    assert metrics["generator_steps"] == 2 and metrics["critic_steps"] == 4
    # The sample grid was decoded by the Wan (3D) VAE at the end of training.
    assert (tmp_path / "out" / "samples" / "step_000002.mp4").stat().st_size > 0
    # The CLIs serve the flow student and its teacher: the teacher samples with flow Euler by default.
    from avdm.export import main as export_main
    from avdm.sample import main as sample_main

    ckpt = str(tmp_path / "out" / "checkpoints" / "last.ckpt")
    config = tmp_path / "out" / "config.yaml"  # what Hydra saves as .hydra/config.yaml
    OmegaConf.save(cfg, config)
    common = ["--config", str(config), "--prompts", PROMPTS[0]]
    sample_main([ckpt, *common, "--teacher", "--steps", "3", "--out", str(tmp_path / "t")])
    assert "teacher (flow_euler, 3 steps" in capsys.readouterr().out
    export_main([ckpt, str(tmp_path / "export"), "--config", str(config)])
    info = json.loads((tmp_path / "export" / "avdm_export.json").read_text())
    assert info["family"] == "flow" and info["renoise"] == "deterministic"
    assert info["set_timesteps"]["sigmas"] == pytest.approx([t / 1000 for t in ladder], abs=1e-6)
    for key in ("gen/regression/loss", "gen/gan/loss", "critic/gan/loss"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
