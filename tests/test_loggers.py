"""Loggers from config: scalars, the composed config and the samples reach each one."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from avdm.config import CONFIG_DIR
from avdm.errors import ConfigError
from avdm.training.fit import fit

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={out}",
                "trainer.max_steps=2",
                "trainer.enable_progress_bar=false",
                "callbacks.samples.every_n_steps=0",
                "callbacks.samples.prompts=[a red ball moving left]",
                *overrides,
            ],
        )


def test_a_two_step_run_with_csv_and_tensorboard_logs_scalars_config_and_samples(tmp_path):
    fit(_cfg(tmp_path, "logger=[csv,tensorboard]", "module.critic_lr=3.0e-5", "loss.denoising.t_min=0.1"))
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events, "TensorBoard wrote an event file"
    acc = event_accumulator.EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"gen/loss", "gen/denoising/loss", "lr/generator", "step/generator"} <= scalars
    assert acc.Tags()["images"] == ["samples"], "the sample frames, from the PNG beside the mp4"
    raw = b"".join(p.read_bytes() for p in events)
    assert b"module/critic_lr" in raw and b"loss/denoising/t_min" in raw, "the config as hyperparameters"
    hparams = (tmp_path / "csv" / "hparams.yaml").read_text()
    assert "critic_lr: 3.0e-05" in hparams, "the CSV logger gets the same config"
    assert (tmp_path / "samples" / "step_000002.png").is_file()


def test_a_logger_without_its_package_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ModuleNotFoundError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(
        ConfigError, match=r"logger=wandb: its package is not installed; pip install 'avdm\[wandb\]'"
    ):
        fit(_cfg(tmp_path, "logger=wandb"))
