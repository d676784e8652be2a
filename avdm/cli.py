"""Console scripts (``avdm-train``, ``avdm-sample``, ...): the same commands as ``python -m avdm.X``.

A console script exits with what its function returns; several ``main`` functions return their
results (paths, metrics) for use from Python, which ``sys.exit`` would print and turn into status 1,
so each script here runs ``main`` and returns 0 (``data.check`` returns its own status).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def _command(module: str) -> Callable[[], int]:
    def run() -> int:
        importlib.import_module(module).main()
        return 0

    return run


train = _command("avdm.train")
synthesize = _command("avdm.synthesize")
precompute = _command("avdm.precompute")
sample = _command("avdm.sample")
export = _command("avdm.export")
evaluate = _command("avdm.evaluate")
compare = _command("avdm.compare")
plot = _command("avdm.plot")
plan = _command("avdm.plan")


def data_check() -> int:
    from avdm.data.check import main

    return main()
