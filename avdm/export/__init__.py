"""Diffusers folders of a trained model that load without avdm: ``python -m avdm.export CKPT OUT_DIR``.

:func:`export_student` writes a distilled student, :func:`export_teacher` a stage of teacher training; each
hands the work to the module of the run's family (``avdm/export/<family>.py``: its folder layout and model
card text), with the family-neutral parts beside them: :mod:`~avdm.export.schedulers` (schedulers that
reproduce a student's ladder), :mod:`~avdm.export.lora` (a LoRA student's adapter alone),
:mod:`~avdm.export.model_card` (``avdm_export.json`` and ``README.md``).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from avdm.errors import ExportError, report_user_errors
from avdm.models.families import Family
from avdm.models.prompt_encoders import PromptEncoder


def family_exporter(family: Family) -> ModuleType:
    """``avdm.export.<family.name>``: the family's ``export_student`` and ``export_teacher``."""
    try:
        return importlib.import_module(f"avdm.export.{family.name}")
    except ModuleNotFoundError as err:
        if err.name != f"avdm.export.{family.name}":
            raise
        where = f"avdm/export/{family.name}.py"
        raise ExportError(f"the {family.name} family has no exporter ({where})") from None


def export_student(module: Any, out_dir: str | Path, use_ema: bool = True) -> Path:
    """Write the student of ``module`` (a :class:`~avdm.training.distillation.DistillationModule`; its EMA
    when kept and ``use_ema``) as a diffusers folder; ``AnimateDiffPipeline.from_pretrained(out_dir)``
    loads an AnimateDiff student without avdm, a flow student is written as :mod:`avdm.export.wan` says."""
    if module.vae is None:
        raise ExportError("the module has no VAE; a diffusers pipeline needs one")
    return family_exporter(module.family).export_student(module, Path(out_dir), use_ema)


def export_teacher(
    out_dir: str | Path,
    family: Family,
    model: torch.nn.Module,
    vae: torch.nn.Module,
    prompt_encoder: PromptEncoder,
    scheduler_config: dict[str, Any],
    info: dict[str, Any] | None = None,
    include_vae: bool = True,
) -> Path:
    """Write a (trained) teacher as a diffusers folder that ``model.source=pretrained
    model.pretrained.base_model=OUT_DIR`` loads back; ``include_vae=False`` leaves out a VAE the teacher
    reuses from another folder (where the family's layout allows it)."""
    exporter = family_exporter(family)
    return exporter.export_teacher(
        Path(out_dir), model, vae, prompt_encoder, scheduler_config, dict(info or {}), include_vae
    )


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    """``python -m avdm.export CKPT OUT_DIR [--no-ema]``: a distilled student as a diffusers folder."""
    parser = argparse.ArgumentParser(prog="python -m avdm.export", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("ckpt", help="<run>/checkpoints/NAME.ckpt")
    parser.add_argument("out_dir", help="diffusers folder to write")
    parser.add_argument("--no-ema", action="store_true", help="export the raw generator, not its EMA")
    parser.add_argument("--config", default=None, help="run config (default <run>/.hydra/config.yaml)")
    args = parser.parse_args(argv)
    from avdm.training.checkpointing.run_loading import load_run

    run = load_run(args.ckpt, args.config)
    out = export_student(run.module, args.out_dir, use_ema=not args.no_ema)
    print(f"Exported the student to {out} (see {out / 'README.md'})")
