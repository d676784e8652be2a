"""Teacher families: one module each (``animatediff``, ``wan``), holding what avdm knows of that family.

A family module defines ``FAMILY`` (a :class:`Family`), its builder (the ``_target_`` of its
``conf/model/*.yaml``, returning a :class:`~avdm.models.bundle.ModelBundle`), its
:class:`~avdm.models.denoiser.Denoiser` views, and how its weights are loaded and sized. What only export
needs (the diffusers folder layout, the model card text) lives in the module of the same name under
``avdm/export/``, found by :attr:`Family.name`. ``docs/adding_a_family.md`` walks through adding one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One teacher family.

    Attributes:
        name: the family's module name, under ``avdm/models/families/`` and ``avdm/export/``.
        reference_sampler: the teacher's own diffusers sampler, a key of
            :data:`avdm.models.sampling.SCHEDULERS` (``ddim``, ``flow_euler``, ...).
        reference_steps: its step count (the teacher rows of the results tables).
    """

    name: str
    reference_sampler: str
    reference_steps: int
