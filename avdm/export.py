"""``python -m avdm.export CKPT OUT_DIR [--no-ema]``: a distilled student as a diffusers folder that loads
without avdm (what the folder holds, and why its scheduler reproduces the student:
:mod:`avdm.training.pipeline_export`)."""

from __future__ import annotations

import argparse

from avdm.errors import report_user_errors
from avdm.training.pipeline_export import (
    export_flow_student,
    export_student,
    export_teacher,
    student_scheduler,
)

__all__ = ["export_flow_student", "export_student", "export_teacher", "main", "student_scheduler"]


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m avdm.export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="<run>/checkpoints/NAME.ckpt")
    parser.add_argument("out_dir", help="diffusers folder to write")
    parser.add_argument("--no-ema", action="store_true", help="export the raw generator, not its EMA")
    parser.add_argument("--config", default=None, help="run config (default <run>/.hydra/config.yaml)")
    args = parser.parse_args(argv)
    from avdm.training.checkpoints import load_run

    run = load_run(args.ckpt, args.config)
    out = export_student(run.module, args.out_dir, use_ema=not args.no_ema)
    print(f"Exported the student to {out} (see {out / 'README.md'})")


if __name__ == "__main__":
    main()
