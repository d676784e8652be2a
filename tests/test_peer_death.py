"""A rank that dies in a two-process run (``trainer=ddp_cpu``, Lightning starts the second process): the
other process ends within 60 s with one line naming the rank and the resume command, and resuming from
the checkpoint it names repeats the uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

RUN = [
    "+experiment=avdm2_tiny", "trainer=ddp_cpu", "trainer.max_steps=6",
    "callbacks.checkpoint.every_n_train_steps=2", "callbacks.samples.every_n_steps=0",
    "callbacks.diagnostics=null", "callbacks.collapse=null", "callbacks.plots=null",
]  # fmt: skip
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _train(cwd: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "avdm.train", *RUN, *args]
    return subprocess.Popen(
        command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _child(pid: int) -> int:
    """The pid of the second rank: the ``avdm.train`` process the launching one started."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if parent == pid and b"avdm.train" in command:
                return int(entry.name)
    raise AssertionError(f"no second rank under pid {pid}")


def _killed_midway(tmp_path: Path, name: str) -> tuple[subprocess.Popen, str, float]:
    """Start a run, kill its second rank with SIGKILL once its first checkpoint and ``last.ckpt`` exist;
    the launching rank's exit status, stderr and seconds from the kill to its exit."""
    run = _train(tmp_path, f"hydra.run.dir={name}")
    checkpoints = tmp_path / name / "checkpoints"
    deadline = time.monotonic() + 300
    while not ((checkpoints / "last.ckpt").exists() and list(checkpoints.glob("epoch=*.ckpt"))):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(_child(run.pid), signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = run.communicate(timeout=120)
    return run, err, time.monotonic() - killed_at


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_in_one_line_and_the_resume_repeats_the_run(tmp_path: Path) -> None:
    straight = _train(tmp_path, "hydra.run.dir=straight")
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]

    run, err, seconds = _killed_midway(tmp_path, "killed")
    assert run.returncode == 1 and seconds < 60, (run.returncode, seconds)
    lines = [line for line in err.splitlines() if line.startswith("avdm:")]
    assert len(lines) == 1, err[-3000:]
    line = r"avdm: error: rank 1 \(pid \d+\) ended by signal SIGKILL; this run stopped; resume with: "
    assert re.match(line, lines[0]), lines[0]
    assert "Traceback" not in err
    resume = lines[0].split("resume with: ", 1)[1].split()
    assert resume[:3] == ["python", "-m", "avdm.train"]
    ckpt = next(a for a in resume if a.startswith("ckpt_path=")).split("=", 1)[1]
    assert Path(ckpt) == tmp_path / "killed" / "checkpoints" / "last.ckpt"

    resumed = subprocess.run(
        [sys.executable, *resume[1:]], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _trainable(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = _trainable(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert int(a["generator_steps"]) == int(b["generator_steps"]) == 6
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_a_rank_ending_with_an_error_leaves_this_rank_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error every rank meets (bad data, NaN) ends rank 1 with a status, not a signal: the watch waits
    for this rank's own error (here: the fit ending) instead of reporting rank 1; a killed rank is named."""
    import threading

    from avdm.training.callbacks import peer_watch
    from avdm.training.callbacks.peer_watch import PeerWatch

    monkeypatch.setattr(peer_watch, "ERROR_GRACE_S", 5.0)
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    failed.wait()
    watch = PeerWatch(period_s=0.05)
    watch._children = [failed]
    assert watch.dead_peer() == f"rank 1 (pid {failed.pid}) ended by code 2"
    thread = threading.Thread(target=watch._watch, daemon=True)
    thread.start()
    time.sleep(0.5)
    watch.on_exception(None, None, RuntimeError("this rank's own error"))  # type: ignore[arg-type]
    thread.join(timeout=5)
    assert not thread.is_alive()  # returned instead of ending this process

    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()
    watch._children = [killed]
    assert watch.dead_peer() == f"rank 1 (pid {killed.pid}) ended by signal SIGKILL"
    assert "no checkpoint was written yet" in watch.stopped_line("x")
