"""What a user of pip sees: the console scripts, the version, the typing marker, the torch range."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

import avdm

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_console_script_is_a_callable_that_returns_an_exit_status():
    scripts = PROJECT["scripts"]
    commands = {
        "train",
        "synthesize",
        "precompute",
        "sample",
        "export",
        "evaluate",
        "compare",
        "data-check",
        "plot",
        "plan",
    }
    assert {name.removeprefix("avdm-") for name in scripts} == commands
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("avdm-data-check") is None, reason="avdm is not installed with its scripts")
def test_installed_scripts_exit_0_on_help_and_2_on_a_missing_file(tmp_path):
    ok = subprocess.run(["avdm-compare", "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "usage:" in ok.stdout, ok.stderr[-2000:]
    command = ["avdm-data-check", str(tmp_path / "nope.csv"), str(tmp_path)]
    bad = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_version_and_typing_marker():
    from importlib.metadata import version

    assert avdm.__version__ == version("avdm") == PROJECT["version"]
    assert (Path(avdm.__file__).parent / "py.typed").is_file()


def test_torch_range_admits_the_released_versions():
    from packaging.requirements import Requirement

    torch_req = next(Requirement(r) for r in PROJECT["dependencies"] if r.startswith("torch"))
    assert all(torch_req.specifier.contains(v) for v in ("2.5.0", "2.13.0", "2.14.0", "2.15.0"))
