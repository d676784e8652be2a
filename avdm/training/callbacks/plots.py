"""Pictures of a run: PNG plots of its losses, ``diag/`` curves and learning rates, read from the CSV
logger's ``metrics.csv`` (``python -m avdm.plot RUN_DIR``; :class:`PlotRun` at the end of training).

Each figure has one panel per quantity, against generator steps; the teacher's value of a diagnostic
(``diag/teacher/...``) is drawn as a dashed line in its panel.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from pathlib import Path

import lightning as L

from avdm.errors import AvdmUserError

log = logging.getLogger(__name__)

# (file name, title, which columns) of the figures written.
FIGURES: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("losses.png", "losses", lambda c: c.endswith("loss") and c.split("/")[0] in ("gen", "critic")),
    (
        "diagnostics.png",
        "collapse diagnostics (dashed: the teacher from the same noise)",
        lambda c: (
            c.startswith("diag/")
            and not c.startswith(("diag/teacher/", "diag/ratio/", "diag/excess/", "diag/grad_norm"))
        ),
    ),
    ("learning_rates.png", "learning rates", lambda c: c.startswith("lr/")),
)


def find_metrics_csv(run_dir: str | Path) -> Path:
    """The CSV logger's ``metrics.csv`` under ``run_dir`` (the newest when there are several)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise AvdmUserError(f"{root}: not a run folder")
    found = sorted(root.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise AvdmUserError(f"{root}: no metrics.csv under it (written by the CSV logger: logger=csv)")
    return found[-1]


def read_curves(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Every column of a Lightning ``metrics.csv`` as ``(generator step, value)`` points (rows without a
    value skipped); the x axis is ``step/generator`` where logged, else Lightning's ``step``."""
    curves: dict[str, list[tuple[float, float]]] = {}
    last_generator_step = 0.0
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("step/generator"):
                last_generator_step = float(row["step/generator"])
            x = last_generator_step if "step/generator" in row else float(row.get("step") or 0)
            for column, text in row.items():
                if not text or column in ("epoch", "step") or column.startswith("step/"):
                    continue
                try:
                    value = float(text)
                except ValueError:
                    continue
                points = curves.setdefault(column, [])
                # Lightning repeats a step's value in the rows of steps that did not log it.
                if math.isfinite(value) and (not points or points[-1] != (x, value)):
                    points.append((x, value))
    return curves


Curves = dict[str, list[tuple[float, float]]]


def plot_curves(runs: dict[str, Curves], columns: list[str], title: str, out: Path) -> Path:
    """One figure, one panel per column, one line per run (labelled when there are several), and the
    ``diag/teacher/`` reference of a diagnostic as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        for label, curves in runs.items():
            if column not in curves:
                continue
            xs, ys = zip(*curves[column])
            ax.plot(xs, ys, lw=1.2, marker="." if len(xs) < 40 else None, label=label)
        teacher = column.replace("diag/", "diag/teacher/", 1)
        references = [
            c[teacher][-1][1] for c in runs.values() if column.startswith("diag/") and c.get(teacher)
        ]
        if references:
            ax.axhline(references[0], ls="--", color="grey", lw=1)
        if column.startswith("diag/ratio/"):
            ax.axhline(1.0, ls="--", color="grey", lw=1)  # as the teacher
        ax.set_title(column, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("generator step", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``losses.png``, ``diagnostics.png`` and ``learning_rates.png`` (those with data) to
    ``out_dir`` (default ``RUN_DIR/plots``); returns their paths."""
    curves = read_curves(find_metrics_csv(run_dir))
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    written = []
    for name, title, wanted in FIGURES:
        columns = sorted(c for c in curves if wanted(c))
        if columns:
            written.append(plot_curves({Path(run_dir).name: curves}, columns, title, out / name))
    return written


def plot_comparison(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Several runs in one set of figures (one line per run, labelled by folder name), plus
    ``ratios.png``: every ``diag/ratio/*`` curve, what the collapse alarm judges."""
    runs = {Path(d).name: read_curves(find_metrics_csv(d)) for d in run_dirs}
    figures = (*FIGURES, ("ratios.png", "diagnostics / the teacher's (1 = as the teacher)", _is_ratio))
    written = []
    for name, title, wanted in figures:
        columns = sorted({c for curves in runs.values() for c in curves if wanted(c)})
        if columns:
            written.append(plot_curves(runs, columns, title, Path(out_dir) / name))
    return written


def _is_ratio(column: str) -> bool:
    return column.startswith(("diag/ratio/", "diag/excess/"))


class PlotRun(L.Callback):
    """At the end of training, write the run's PNG plots (:func:`plot_run`) to ``<output_dir>/plots``."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.written: list[Path] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()  # the CSV logger flushes its rows every 100 steps otherwise
        try:
            self.written = plot_run(self.output_dir)
        except AvdmUserError as err:  # no CSV logger in this run: nothing to draw
            log.info("No plots: %s", err)
            self.written = []
