"""The Hydra entry point as a user runs it: experiments compose, sweeps fan out, errors are one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from avdm.config import CONFIG_DIR, validate
from avdm.errors import ConfigError

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp/avdm-compose", *overrides])


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "2", **os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "avdm.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = _compose(f"+experiment={experiment}")
    validate(cfg)
    assert cfg.loss, "an experiment selects at least one loss plugin"


def test_paper_experiment_carries_the_paper_settings():
    cfg = _compose("+experiment=avdm2_animatediff")
    assert cfg.model.num_frames == 16 and cfg.model.resolution == 512
    assert (cfg.data.num_frames, cfg.data.stride, cfg.data.resolution, cfg.data.batch_size) == (16, 4, 512, 2)
    assert cfg.data._target_ == "avdm.data.openvid.OpenVidDataModule"
    assert cfg.model.pretrained.motion_adapter.startswith("guoyww/animatediff-motion-adapter-v1-5")
    assert [g.lr for g in cfg.module.generator_param_groups] == [2e-5, 4e-6]
    assert cfg.module.critic_lr == 2e-5 and cfg.module.warmup_steps == 500
    assert cfg.module.critic_steps_per_generator_step == 2
    assert set(cfg.loss) == {"sdm", "gan"} and cfg.loss.sdm.num_frames == 4
    assert (cfg.loss.sdm.t_min, cfg.loss.sdm.t_max, cfg.loss.gan.t_min, cfg.loss.gan.t_max) == (
        0.2,
        0.98,
        0.0,
        0.5,
    )


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["loss.sdm.t_min=0.9", "loss.sdm.t_max=0.1"], "loss.sdm.t_min"),
        (["loss.gan.t_max=1.5"], "loss.gan.t_max"),
        (["loss.sdm.weight=-1"], "loss.sdm.weight"),
        (["loss.sdm.num_frames=9"], "loss.sdm.num_frames"),
        (["+loss.gan.lambda_adm=1"], "loss.gan.lambda_adm"),
        (["loss.gan._target_=avdm.losses.NoSuchLoss"], "loss.gan._target_"),
        (["+trainer.max_stepz=3"], "trainer.max_stepz"),
        (["+module.ema=0.99"], "module.ema"),
        # wrong types, from the constructors' type hints
        (["loss.sdm.t_min=abc"], "loss.sdm.t_min='abc': expected a number"),
        (["module.warmup_steps=ten"], "module.warmup_steps='ten': expected an integer"),
        (["module.backward_simulation=3"], "module.backward_simulation=3: expected true or false"),
        (["seed=abc"], "seed='abc'"),
        (["data.num_samples=1.5"], "data.num_samples=1.5: expected an integer"),
        (["trainer.precision=17"], "trainer.precision=17"),
        # ranges and finiteness, before any model is built
        (["loss.sdm.weight=nan"], "loss.sdm.weight=nan: must be finite"),
        (["loss.gan.weight=inf"], "loss.gan.weight=inf: must be finite"),
        (["module.critic_lr=-1"], r"module.critic_lr=-1: expected a number in \(0, inf\]"),
        (["module.generator_param_groups=[{pattern: '.*', lr: -1e-4}]"], "generator_param_groups[0].lr"),
        (["module.generator_param_groups=[{pattern: '.*', lr: 1e-4, momentum: 1}]"], "[0].momentum: unknown"),
        (
            ["module.generator_timesteps=[249,499]"],
            "module.generator_timesteps=[249, 499]: expected strictly",
        ),
        (
            ["module.generator_timesteps=[1500,10]"],
            "module.generator_timesteps=[1500, 10]: expected timesteps in",
        ),
        (["module.generator_timesteps=[]"], "module.generator_timesteps=[]"),
        (["module.ema_decay=1.5"], "module.ema_decay=1.5"),
        (["module.betas=[0.9,1.5]"], "module.betas=[0.9, 1.5]"),
        (["data.batch_size=0"], "data.batch_size=0: expected a number in [1, inf]"),
        (["trainer.max_steps=-5"], "trainer.max_steps=-5: expected a number in [1, inf] or -1"),
        (["trainer.max_steps=0"], "trainer.max_steps=0"),
        (["callbacks.checkpoint.every_n_train_steps=-1"], "callbacks.checkpoint.every_n_train_steps=-1"),
        # unknown keys at any level
        (["+bogus_key=1"], "bogus_key: unknown top-level key"),
        (["+data.bogus=1"], "data.bogus: unknown key"),
        (["+callbacks.samples.bogus=1"], "callbacks.samples.bogus: unknown key"),
    ],
)
def test_invalid_configs_name_the_key(overrides, key):
    """Each bad value is refused by validate(), before any model is built, naming key and value."""
    with pytest.raises(ConfigError, match=re.escape(key) if "\\" not in key else key):
        validate(_compose("+experiment=avdm2_tiny", *overrides))


@pytest.mark.slow
def test_tiny_experiment_trains_sharded_on_two_processes_and_exports(tmp_path):
    """``trainer=fsdp2_cpu`` as a user runs it (Lightning starts the second process), on the tiny Wan teacher
    with an EMA, bf16 gathered weights, and the diagnostics and sample videos of every step between the
    sharded updates: metrics, sharded checkpoints that a resume accepts and ``avdm.export`` turns into
    diffusers folders, a missing shard named in one line."""
    import shutil

    import torch
    from diffusers import WanTransformer3DModel

    from avdm.export import main as export_main
    from avdm.training.checkpointing.run_loading import load_run
    from avdm.training.checkpointing.storage import CheckpointError, read_checkpoint
    from avdm.training.fit import check_resume_checkpoint

    result = _run(
        tmp_path, "+experiment=avdm2_tiny", "model=wan_tiny", "model.image_teacher=shared",
        "data.latent_shape=[4,4,8,8]", "module.generator_param_groups=[{pattern:'.*',lr:1e-5}]",
        "module.ema_decay=0.9", "trainer=fsdp2_cpu", "module.sharding.param_dtype=bfloat16",
        "trainer.max_steps=2", "callbacks.diagnostics.every_n_steps=1", "callbacks.samples.every_n_steps=1",
        "callbacks.collapse=null", "callbacks.plots=null", "hydra.run.dir=run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["generator_steps"] == 2 and metrics["critic_steps"] == 4
    for key in (
        "gen/sdm/loss",
        "gen/gan/loss",
        "critic/sdm/loss",
        "critic/gan/loss",
        "critic/gan/logits_real",
    ):
        assert key in metrics
    assert sorted(p.name for p in (run / "samples").glob("step_*.mp4")) == [
        "step_000001.mp4",
        "step_000002.mp4",
    ]
    assert metrics["diag/step"] == 2 and 0 < metrics["diag/ratio/pixel/flicker"] < 10
    last = run / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    loaded = load_run(last)  # the consolidated checkpoint, in a module built from the run's config
    assert int(loaded.module.generator_steps) == 2
    assert check_resume_checkpoint(loaded.module, "last", run) == str(last)
    export_main([str(last), str(tmp_path / "student")])
    exported = WanTransformer3DModel.from_pretrained(tmp_path / "student" / "transformer")
    ours = loaded.module.sampling_generator().denoiser.model.state_dict()  # the EMA
    assert exported.state_dict().keys() == ours.keys()
    for key, value in exported.state_dict().items():
        assert torch.equal(value, ours[key]), key

    broken = tmp_path / "broken.ckpt"
    shutil.copytree(last, broken)
    (broken / "__1_0.distcp").unlink()
    for shapes_only in (False, True):  # export / sample, and the check before a resume
        with pytest.raises(CheckpointError, match="__1_0.distcp missing"):
            read_checkpoint(broken, mmap=shapes_only)


@pytest.mark.slow
def test_missing_pretrained_weights_end_in_one_line_naming_the_key(tmp_path):
    result = _run(tmp_path, "+experiment=avdm2_animatediff", "hydra.run.dir=run")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("avdm: error: Missing") and "model.pretrained.base_model=" in last


@pytest.mark.slow
def test_inverted_t_range_exits_with_one_line(tmp_path):
    result = _run(
        tmp_path, "+experiment=avdm2_tiny", "loss.sdm.t_min=0.9", "loss.sdm.t_max=0.1", "hydra.run.dir=run"
    )
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("avdm: error: loss.sdm.t_min=0.9")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+experiment=avdm2_tiny", "loss.sdm.guidance_convention=bogus"],
            "guidance_convention must be one of",
        ),
        (["model=wan_tiny", "model.position=[time]"], "model.position must be distinct names from"),
    ],
    ids=["plugin-choice", "model-position"],
)
def test_values_refused_by_a_constructor_end_in_one_line(tmp_path, overrides, message):
    """Checks inside plugin and model constructors (not in validate) still stop the run in one line."""
    result = _run(tmp_path, *overrides, "trainer.max_steps=1", "hydra.run.dir=run")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("avdm: error: ") and message in last
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing was trained"


@pytest.mark.slow
def test_multirun_sweep_gives_each_job_its_own_folder_and_metrics(tmp_path):
    result = _run(
        tmp_path,
        "-m",
        "+experiment=avdm2_tiny",
        "loss.sdm.weight=0.5,1.0",
        "loss.gan.t_max=0.3,0.5",
        "trainer.max_steps=1",
        "hydra.sweep.dir=sweep",
        "callbacks.diagnostics=null",  # not about what a run shows (tests/test_collapse.py)
        "callbacks.collapse=null",
        "callbacks.plots=null",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 4
    combos = set()
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["generator_steps"] == 1
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        combos.add((cfg.loss.sdm.weight, cfg.loss.gan.t_max))
        assert (
            f"loss.sdm.weight={cfg.loss.sdm.weight}" in job.name
            and f"loss.gan.t_max={cfg.loss.gan.t_max}" in job.name
        )
    assert combos == {(0.5, 0.3), (0.5, 0.5), (1.0, 0.3), (1.0, 0.5)}


@pytest.mark.parametrize(
    "experiment, targets",
    [
        ("avdm2_animatediff", {"sdm": "FrameSDMLoss", "gan": "DenoisingGANLoss"}),
        ("avdm2_video_sdm", {"sdm": "VideoSDMLoss", "gan": "DenoisingGANLoss"}),
        ("avdm2_gan_only", {"gan": "DenoisingGANLoss"}),
        ("dmd2_style", {"sdm": "VideoSDMLoss", "gan": "DenoisingGANLoss", "denoising": "DenoisingLoss"}),
    ],
)
def test_experiments_select_their_plugins(experiment, targets):
    cfg = _compose(f"+experiment={experiment}")
    assert {name: node._target_.rsplit(".", 1)[1] for name, node in cfg.loss.items()} == targets
    assert cfg.model.source == "pretrained" and cfg.trainer.strategy == "ddp_find_unused_parameters_true"


def test_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "paths.output_dir=/tmp/avdm-compose",
                "+experiment=avdm2_animatediff",
                "hydra/launcher=slurm",
            ],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == cfg.hydra.launcher.tasks_per_node == 8


@pytest.mark.parametrize("data", ["openvid", "latent_cache", "synthetic_latents"])
def test_paper_experiment_accepts_every_data_module(data):
    validate(_compose("+experiment=avdm2_animatediff", f"data={data}"))
