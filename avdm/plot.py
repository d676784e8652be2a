"""``python -m avdm.plot RUN_DIR [RUN_DIR ...] [--out DIR]``: PNG plots of a run's losses, ``diag/`` curves
and learning rates (:mod:`avdm.training.callbacks.plots`), also written at the end of every training run;
several runs are drawn in the same panels (``--out`` needed), with a ``ratios.png`` of the values the
collapse alarm judges."""

from __future__ import annotations

import argparse
from pathlib import Path

from avdm.errors import report_user_errors


@report_user_errors
def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m avdm.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="+", help="run folders (holding the CSV logger's metrics.csv)")
    parser.add_argument("--out", default=None, help="folder of the PNGs (default RUN_DIR/plots)")
    args = parser.parse_args(argv)
    from avdm.training.callbacks.plots import plot_comparison, plot_run

    if len(args.run_dir) > 1 and args.out is None:
        parser.error("--out: needed with several run folders")
    if len(args.run_dir) > 1:
        written = plot_comparison(args.run_dir, args.out)
    else:
        written = plot_run(args.run_dir[0], args.out)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
