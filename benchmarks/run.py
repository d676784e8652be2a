"""``make bench``: every benchmark, results (JSON + markdown) in benchmarks/results/."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = ("benchmarks.bench_training", "benchmarks.bench_decode", "benchmarks.bench_overhead")


def main() -> None:
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            print(f"{name}: not present, skipped")
            continue
        print(f"== {name}")
        print(json.dumps(module.run(RESULTS), indent=2))


if __name__ == "__main__":
    main()
