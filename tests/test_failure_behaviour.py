"""Faults a user meets: bad command lines, NaN / inf, full disks, broken checkpoints, SIGINT / SIGTERM.

Each ends in one line and a non-zero exit, never leaves a non-finite or truncated checkpoint, and
says which checkpoint is good.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from avdm.config import CONFIG_DIR
from avdm.training.checkpointing.run_loading import load_run
from avdm.training.checkpointing.storage import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    nonfinite_tensors,
    read_checkpoint,
)
from avdm.training.fit import fit
from avdm.training.update import NonFiniteLossError, NonFiniteWeightsError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
# The default config: the tiny random AnimateDiff teacher on synthetic latents, denoising loss only.
# Not about what a run shows: no samples, diagnostics or plots (tests/test_collapse.py, test_demo.py).
QUICK = [
    "callbacks.samples=null",
    "callbacks.diagnostics=null",
    "callbacks.collapse=null",
    "callbacks.plots=null",
    "trainer.enable_progress_bar=false",
    "module.warmup_steps=0",
]


def _popen(module: str, *args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _one_line_failure(run: subprocess.Popen, code: int = 2, timeout: float = 300) -> str:
    """The run's single ``avdm: ...`` line, after checking its exit status and that no traceback came."""
    out, err = run.communicate(timeout=timeout)
    assert run.returncode == code, (run.returncode, err[-2000:])
    assert "Traceback" not in out + err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("avdm: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={out}", "~logger", *QUICK, *overrides])


def _all_checkpoints_finite(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.ckpt"))
    for path in files:
        assert not nonfinite_tensors(read_checkpoint(path)["state_dict"]), path
    return files


# --- the command line -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_command_lines_end_in_one_line_and_exit_2(tmp_path):
    (tmp_path / "a_file").write_text("")
    cases = {
        "unknown experiment": (["+experiment=nope"], "experiment=nope: unknown experiment name; accepted: "),
        "unknown loss": (["loss=[denoising,nope]"], "loss=nope: unknown loss name; accepted: denoising"),
        "unknown key": (["modul.critic_lr=1"], "modul.critic_lr: no such key in the config"),
        "unknown top-level key": (["+bogus_key=1"], "bogus_key: unknown top-level key"),
        "wrong type": (["module.warmup_steps=ten"], "module.warmup_steps='ten': expected an integer"),
        "out of range": (["data.batch_size=0"], "data.batch_size=0: expected a number in [1, inf]"),
        "run folder": (
            ["hydra.run.dir=a_file/run"],
            "hydra.run.dir=a_file/run: cannot create the run folder",
        ),
        "accelerator not there": (["trainer.accelerator=tpu"], "avdm: error: trainer: "),
    }
    runs = {
        name: _popen("avdm.train", "hydra.run.dir=run", *args, "trainer.max_steps=1", cwd=tmp_path)
        for name, (args, _) in cases.items()
    }
    for name, run in runs.items():
        line = _one_line_failure(run)
        assert line.startswith("avdm: error: ") and cases[name][1] in line, (name, line)
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing trained"
    assert (tmp_path / "a_file").is_file()


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("synthesize", ["batch_size=0"], "batch_size=0: expected a number in [1, inf]"),
        ("synthesize", ["sampler.num_steps=abc"], "sampler.num_steps='abc': expected an integer"),
        ("synthesize", ["+sampler.cfg=2"], "sampler.cfg: unknown key"),
        ("synthesize", ["sampler.guidance_scale=nan"], "sampler.guidance_scale=nan: must be finite"),
        ("precompute", ["+bogus=1"], "bogus: unknown top-level key"),
        ("precompute", ["dtype=int8"], "dtype='int8': expected one of 'float32', 'bfloat16', 'float16'"),
        ("precompute", ["data.stride=0"], "data.stride=0: expected a number in [1, inf]"),
        ("precompute", ["limit=-3"], "limit=-3"),
    ],
)
def test_tool_configs_are_validated_like_training_configs(config, overrides, message):
    from avdm.errors import ConfigError
    from avdm.precompute import precompute
    from avdm.synthesize import synthesize

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config, overrides=overrides)
    with pytest.raises(ConfigError) as caught:
        {"synthesize": synthesize, "precompute": precompute}[config](cfg)
    assert message in str(caught.value)


# --- non-finite training ----------------------------------------------------------------------------


def test_an_infinite_weighted_total_is_skipped_and_never_checkpointed(tmp_path):
    # Each term is finite (the denoising loss of a random teacher is about 1.1); weighted by 3.4e38 the
    # total, which is what is backpropagated, overflows float32.
    cfg = _cfg(
        tmp_path,
        "loss.denoising.weight=3.4e38",
        "module.max_consecutive_nonfinite=3",
        "trainer.max_steps=4",
        "callbacks.checkpoint.every_n_train_steps=1",
    )
    with pytest.raises(NonFiniteLossError) as caught:
        fit(cfg)
    message = str(caught.value)
    assert "weighted total" in message and "3 consecutive iterations" in message
    assert message.endswith("no checkpoint was written yet")
    assert not list(tmp_path.glob("checkpoints/*.ckpt"))


def test_weights_made_non_finite_by_an_update_stop_the_run_and_the_good_checkpoint_is_named(
    tmp_path, monkeypatch
):
    calls = {"n": 0}
    step = torch.optim.AdamW.step

    def poisoning_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the third generator update: weights NaN, loss and gradient were finite
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    cfg = _cfg(tmp_path, "trainer.max_steps=6", "callbacks.checkpoint.every_n_train_steps=2")
    with pytest.raises(NonFiniteWeightsError) as caught:
        fit(cfg)
    message = str(caught.value)
    assert "generator's weights became non-finite" in message
    good = Path(message.rsplit("the last good checkpoint is ", 1)[1])
    assert good.is_file() and read_checkpoint(good)["global_step"] == 2
    files = _all_checkpoints_finite(tmp_path / "checkpoints")
    assert max(read_checkpoint(f)["global_step"] for f in files) == 2, "nothing written after the poison"


def test_the_final_weights_are_in_last_ckpt_whatever_the_interval(tmp_path):
    metrics = fit(_cfg(tmp_path, "trainer.max_steps=5", "callbacks.checkpoint.every_n_train_steps=2"))
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert metrics["generator_steps"] == 5 and last["global_step"] == 5
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
        "last.ckpt",
    ]
    assert not list((tmp_path / "checkpoints").glob(".*tmp*")), "no temporary file left"


# --- checkpoint files -----------------------------------------------------------------------------------


def _checkpoint(value: float, step: int) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": step}


def test_a_failed_write_keeps_the_previous_checkpoint_and_names_it(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0, 1), target)

    def disk_full(fd: int) -> None:  # the bytes went to the temporary file; flushing them fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointWriteError) as caught:
        io.save_checkpoint(_checkpoint(2.0, 2), target)
    monkeypatch.undo()
    assert str(caught.value) == (
        f"could not write checkpoint {target} (No space left on device); the last good checkpoint is {target}"
    )
    assert read_checkpoint(target)["global_step"] == 1, "the previous file is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "the temporary file is removed"

    with pytest.raises(CheckpointWriteError, match=r"refused to write .*1 of 1 tensors are not finite"):
        io.save_checkpoint(_checkpoint(float("inf"), 3), target)
    assert read_checkpoint(target)["global_step"] == 1


def test_broken_checkpoints_are_named_in_one_line(tmp_path):
    cfg = _cfg(tmp_path / "run", "trainer.max_steps=1")
    fit(cfg)
    good = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(
        __import__("omegaconf").OmegaConf.to_yaml(cfg, resolve=False)
    )
    data = good.read_bytes()
    (tmp_path / "run" / "checkpoints" / "truncated.ckpt").write_bytes(data[: len(data) // 3])
    (tmp_path / "run" / "checkpoints" / "empty.ckpt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "run" / "checkpoints" / "foreign.ckpt")
    state = read_checkpoint(good)
    state["state_dict"] = {k: v for k, v in list(state["state_dict"].items())[1:]}
    torch.save(state, tmp_path / "run" / "checkpoints" / "missing_keys.ckpt")
    expected = {
        "truncated": "cannot be read: truncated or not a torch checkpoint",
        "empty": "is empty",
        "foreign": "is not a Lightning checkpoint",
        "missing_keys": "does not fit the model of this config: 1 weights missing",
        "absent": "does not exist",
    }
    for name, text in expected.items():
        path = tmp_path / "run" / "checkpoints" / f"{name}.ckpt"
        with pytest.raises(CheckpointError) as caught:
            load_run(path)
        assert text in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert int(load_run(good).module.generator_steps) == 1


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as a full disk")
def test_a_full_disk_stops_the_run_in_one_line_without_a_truncated_checkpoint(tmp_path):
    import resource

    def small_files() -> None:  # every file write beyond 2 MB fails (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    run = _popen(
        "avdm.train", "trainer.max_steps=3", "callbacks.checkpoint.every_n_train_steps=1", *QUICK,
        "hydra.run.dir=run", cwd=tmp_path, preexec_fn=small_files,
    )  # fmt: skip
    line = _one_line_failure(run)
    assert line.startswith("avdm: error: could not write checkpoint ") and "File too large" in line
    assert line.endswith("no checkpoint was written yet")
    assert not list((tmp_path / "run" / "checkpoints").iterdir()), "no partial file, no temporary file"


# --- signals ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_and_sigint_save_at_a_step_print_the_resume_command_and_exit_143_130(tmp_path):
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        folder = tmp_path / sig.name
        folder.mkdir()
        args = [
            "trainer.max_steps=1000",
            "callbacks.checkpoint.every_n_train_steps=2",
            *QUICK,
            "hydra.run.dir=run",
        ]
        runs[sig] = (folder, _popen("avdm.train", *args, cwd=folder))
    deadline = time.monotonic() + 240
    for sig, (folder, run) in runs.items():  # signal each run once it is training (its first checkpoint)
        while not list((folder / "run" / "checkpoints").glob("epoch=*.ckpt")) and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[1][-2000:]
            time.sleep(0.2)
        run.send_signal(sig)
    lines, steps = {}, {}
    for sig, (folder, run) in runs.items():
        line = lines[sig] = _one_line_failure(run, code={signal.SIGTERM: 143, signal.SIGINT: 130}[sig])
        prefix = f"avdm: stopped: {sig.name} at step "
        assert line.startswith(prefix), line
        steps[sig] = int(line[len(prefix) :].split(";")[0])
        last = (folder / "run" / "checkpoints" / "last.ckpt").resolve()
        assert f"; saved {last}; resume with: python -m avdm.train " in line
        assert read_checkpoint(last)["global_step"] == steps[sig] >= 2
        assert json.loads((folder / "run" / "metrics.json").read_text())["stopped_by"] == sig.name

    # The printed command resumes the run in its folder; here it is told to stop two steps later.
    folder = runs[signal.SIGTERM][0]
    command = shlex.split(lines[signal.SIGTERM].split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "avdm.train"] and "trainer.max_steps=1000" in command
    stop = steps[signal.SIGTERM] + 2
    args = [a if a != "trainer.max_steps=1000" else f"trainer.max_steps={stop}" for a in command[3:]]
    resumed = _popen("avdm.train", *args, cwd=folder)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert read_checkpoint(folder / "run" / "checkpoints" / "last.ckpt")["global_step"] == stop
