"""One markdown table per question of the performance issue, from the JSON the benchmarks wrote.

``benchmarks/results/summary.md`` (and ``summary.json``, the same numbers): inference speedup against the
NFE limit, training-iteration overhead against the passes the math needs, memory, data throughput
against what training consumes, and the execution switches. A benchmark that did not run is named as
such, never left out silently.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(name: str) -> list[str]:
    return [f"_not measured: `benchmarks/bench_{name}.py` has not written `{name}.json`_", ""]


def inference_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 1. Inference: student at 4 NFE vs teacher at 25 steps + CFG (50 NFE)", ""]
    if data is None:
        return lines + _missing("inference")
    lines += [
        "| model | batch | teacher s | student s | speedup (wall clock) | limit (NFE ratio) | speedup "
        "(denoising loop only) | text encoding s | VAE decode s | text + decode share of student |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in (("shapes_teacher", "shipped shapes teacher"), ("sd15_shaped_random", "SD1.5-shaped")):
        r = data.get(key)
        if r is None:
            lines.append(f"| {label} | not measured |  |  |  |  |  |  |  |  |")
            continue
        cells = [
            f"{label} ({r['setting']})",
            str(r["batch"]),
            f"{r['teacher_total_s']:.3f}",
            f"{r['student_total_s']:.3f}",
            f"**{r['speedup_wall_clock']:.2f}x**",
            f"{r['speedup_nfe_limit']:.1f}x",
            f"{r['speedup_loop_only']:.2f}x",
            f"{r['text_encoding_s']:.3f}",
            f"{r['vae_decode_s']:.3f}",
            f"{r['student_share_text_decode']:.1%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def overhead_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 2. Training iteration: measured time / time of the passes the math requires", ""]
    if data is None:
        return lines + _missing("overhead")
    lines += [
        f"{data['setting']}. Overall ratio **{data['overhead_ratio']:.3f}** (limit 1.0, target <= 1.10).",
        "",
        "| phase | measured s | required s | ratio | of the excess: grad norm + clipping s | rest s |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {n} | {v['measured_s']:.4f} | {v['required_s']:.4f} | {v['ratio']:.3f} | "
            f"{v.get('grad_norm_and_clip_s', float('nan')):.4f} | {v.get('rest_s', float('nan')):.4f} |"
            for n, v in data["phases"].items()
        ),
        "",
    ]
    return lines


def memory_section(data: dict[str, Any] | None, switches: dict[str, Any] | None) -> list[str]:
    lines = ["## 3. Memory of an iteration", ""]
    if data is None:
        return lines + _missing("overhead")
    mem = data["memory"]
    lines += ["| what | MB |", "| --- | --- |"]
    lines += [f"| {n} | {v:.2f} |" for n, v in mem.items() if isinstance(v, float)]
    if switches is not None:
        base = switches["variants"]["baseline"]
        lines.append(f"| generator_phase_activations_mb | {base['generator_phase_activations_mb']:.2f} |")
    return lines + [""]


def data_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 4. Data: clips per second loaded vs consumed", ""]
    if data is None:
        return lines + _missing("overhead")
    return (
        lines
        + ["| what | clips / s |", "| --- | --- |"]
        + [f"| {n} | {v:.2f} |" for n, v in data["data"].items()]
        + [""]
    )


def switches_section(data: dict[str, Any] | None) -> list[str]:
    lines = ["## 5. Execution switches (each keeps the losses; tests/test_execution_switches.py)", ""]
    if data is None:
        return lines + _missing("switches")
    return lines + [
        "| switch | generator iteration x baseline | activations x baseline "
        "| generator-phase loss - baseline |",
        "| --- | --- | --- | --- |",
        *(
            f"| {n} | {r['generator_iteration_vs_baseline']:.3f} | {r['activations_vs_baseline']:.3f} | "
            f"{r['loss_minus_baseline']:.2e} |"
            for n, r in data["variants"].items()
        ),
        "",
    ]


def write_summary(results: Path) -> dict[str, Any]:
    """Write ``summary.md`` / ``summary.json`` in ``results`` from the benchmarks' JSON files there."""
    found = {name: _load(results, name) for name in ("inference", "overhead", "switches", "decode")}
    machine = (
        f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    )
    lines = [
        "# avdm benchmarks",
        "",
        f"Machine: {machine}. Details per benchmark in the other files of this folder.",
        "",
        *inference_section(found["inference"]),
        *overhead_section(found["overhead"]),
        *memory_section(found["overhead"], found["switches"]),
        *data_section(found["overhead"]),
        *switches_section(found["switches"]),
    ]
    (results / "summary.md").write_text("\n".join(lines))
    summary = {"machine": machine, **{k: v for k, v in found.items() if v is not None}}
    (results / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
