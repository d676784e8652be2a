"""Console scripts (``avdm-train``, ``avdm-sample``, ...): the same commands as ``python -m avdm.X``.

A console script exits with what its function returns; several ``main`` functions return their
results (paths, metrics) for use from Python, which ``sys.exit`` would print and turn into status 1,
so each script here runs ``main`` and returns 0 (``data.check`` returns its own status).
"""

from __future__ import annotations

import importlib


def _run(module: str) -> int:
    importlib.import_module(module).main()
    return 0


def train() -> int:
    return _run("avdm.train")


def synthesize() -> int:
    return _run("avdm.synthesize")


def precompute() -> int:
    return _run("avdm.precompute")


def sample() -> int:
    return _run("avdm.sample")


def export() -> int:
    return _run("avdm.export")


def evaluate() -> int:
    return _run("avdm.evaluate")


def compare() -> int:
    return _run("avdm.compare")


def data_check() -> int:
    from avdm.data.check import main

    return main()
