"""End every process of a multi-process run when one of them dies, with one line instead of a hang.

A rank that is killed (out of memory, a node's OOM killer, ``kill -9``) leaves the others waiting in their
next collective until the process group's timeout (30 minutes by default). Lightning's own observer in the
launching process (``trainer=ddp_cpu`` / ``fsdp2_cpu``-style runs: Lightning starts the other ranks)
notices a dead child after up to 5 s and then kills every process with SIGKILL, itself included, without a
word (this watch takes its place); a child whose launching process dies is not watched at all.
:class:`PeerWatch` watches both ways every second: the launching process its children, every other process
the process that started it (the launching rank, or ``torchrun``'s agent, which itself stops the other
workers of a failed one). On a death it stops the remaining children and exits with one line naming the
rank and the checkpoint to resume from. Multi-node peers are not processes of this machine: there the
process group's timeout decides.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

from avdm.training.callbacks.final_checkpoint import checkpoint_folder

# The exit status of a run ended because another of its processes died.
PEER_DIED_EXIT = 1
# Seconds this rank waits, after another exited with an error status, for its own error to end it.
ERROR_GRACE_S = 10.0


def describe_exit(returncode: int) -> str:
    """``code 3`` or ``signal SIGKILL`` for a ``Popen.returncode``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


def _quiet_lightning_observer() -> None:
    """Stop Lightning's child-process observer from acting: it would SIGKILL every process, this one too,
    without a word and without waiting for this watch's line (it looks every 5 s, this watch every 1 s)."""
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver):
            thread._run = lambda: True  # type: ignore[method-assign]  # its loop ends at its next look


class PeerWatch(L.Callback):
    """Watch the other processes of the run from a daemon thread (nothing to do in a one-process run).

    Args:
        resume_command: the command line that resumes the run from a checkpoint, named in the line.
        period_s: seconds between looks.
    """

    def __init__(self, resume_command: Callable[[Path], str] | None = None, period_s: float = 1.0) -> None:
        self.resume_command, self.period_s = resume_command, period_s
        self._done = threading.Event()
        self._last: Path | None = None
        self._children: list[subprocess.Popen] = []
        self._parent: int | None = None
        self._rank = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or stage != "fit":
            return
        self._last = checkpoint_folder(trainer) / "last.ckpt"
        launcher = getattr(trainer.strategy, "launcher", None)
        self._children = list(getattr(launcher, "procs", None) or [])
        self._parent = None if self._children else os.getppid()
        self._rank = trainer.global_rank
        if self._children:
            _quiet_lightning_observer()
        threading.Thread(target=self._watch, daemon=True, name="avdm-peer-watch").start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._done.set()  # a normal end: processes finish at their own pace

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._done.set()  # this rank ends with its own error (fit names a dead peer behind it)

    def dead_peer(self) -> str | None:
        """What ended, if another process of the run has (one look), else ``None``."""
        for local_rank, child in enumerate(self._children, start=1):
            if child.poll() not in (None, 0):
                return f"rank {local_rank} (pid {child.pid}) ended by {describe_exit(child.returncode)}"
        if self._parent is not None and os.getppid() != self._parent:
            return f"the process that started rank {self._rank} (pid {self._parent}) ended"
        return None

    def _ended_by_itself(self) -> bool:
        """A rank that exited with an error status (not killed by a signal): likely an error every rank
        meets at once, which this rank's own run reports in its own line within ``ERROR_GRACE_S``."""
        return any((child.poll() or 0) > 0 for child in self._children)

    def _newest_checkpoint(self) -> Path | None:
        """``last.ckpt``, else the newest checkpoint of the folder (each one is whole: saves are atomic)."""
        if self._last is None or self._last.exists():
            return self._last
        found = [p for p in self._last.parent.glob("*.ckpt") if not p.name.startswith(".")]
        return max(found, key=lambda p: p.stat().st_mtime, default=None)

    def stopped_line(self, what: str) -> str:
        """``<what>; this run stopped; resume with: ...`` (from the newest checkpoint written)."""
        saved = self._newest_checkpoint()
        if saved is None:
            return f"{what}; this run stopped; no checkpoint was written yet"
        resume = self.resume_command(saved) if self.resume_command else str(saved)
        return f"{what}; this run stopped; resume with: {resume}"

    def _watch(self) -> None:
        while not self._done.wait(self.period_s):
            if (what := self.dead_peer()) is None:
                continue
            if self._ended_by_itself() and self._done.wait(ERROR_GRACE_S):
                return  # every rank met the same error (bad data, NaN): this rank reports its own line
            if not self._done.is_set():
                for child in self._children:
                    if child.poll() is None:
                        child.kill()  # it would wait in a collective for the dead rank
                sys.stderr.write(f"avdm: error: {self.stopped_line(what)}\n")
                sys.stderr.flush()
                os._exit(PEER_DIED_EXIT)  # the main thread may be inside a collective that never returns

    def state_dict(self) -> dict[str, Any]:
        return {}
