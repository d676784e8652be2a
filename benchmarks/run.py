"""``make bench``: every benchmark, then the summary; results (JSON + markdown) in benchmarks/results/."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from benchmarks.summary import write_summary

RESULTS = Path(__file__).parent / "results"
# bench_decode first: bench_overhead reads its OpenVid decode rates for the data table.
BENCHMARKS = (
    "benchmarks.bench_decode",
    "benchmarks.bench_overhead",
    "benchmarks.bench_switches",
    "benchmarks.bench_inference",
    "benchmarks.bench_precision",
    "benchmarks.bench_lora",
    "benchmarks.bench_sharding",
    "benchmarks.bench_plan",
)


def main() -> None:
    for name in BENCHMARKS:
        module = importlib.import_module(name)
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        result = module.run(RESULTS)
        print(json.dumps(result, indent=2))
        print(f"== {name}: {time.perf_counter() - began:.0f} s", flush=True)
    write_summary(RESULTS)
    print(f"summary: {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
