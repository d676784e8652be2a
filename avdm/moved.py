"""Import paths of modules that moved in the ``avdm/training/`` re-layout keep working for one release.

``import avdm.module`` (and the other old names below) returns the module at its new place with a
``DeprecationWarning`` naming it; no file is left at the old path. Installed from ``avdm/__init__.py``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from importlib.machinery import ModuleSpec
from types import ModuleType

MOVED: dict[str, str] = {
    **{f"avdm.{name}": f"avdm.training.{name}" for name in (
        "module", "autoencoder", "optim", "callbacks", "checkpoints", "checkpoint_io", "stopping", "loggers",
    )},
    "avdm.visualize": "avdm.data.visualize",
    "avdm.models.teacher_sampling": "avdm.models.sampling",
}  # fmt: skip


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name of :data:`MOVED` to the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module at the new path is already executed."""


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
