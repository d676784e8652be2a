# avdm developer commands. PYTHON can point at any interpreter or virtualenv.
PYTHON ?= python
export HF_HUB_OFFLINE ?= 1

.PHONY: help install test lint format demo bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## install avdm with dev tools; keeps an installed (e.g. CUDA) torch, else takes the CPU wheel 2.13.0
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## run the whole test suite (offline, CPU, < 10 min on 2 cores)
	$(PYTHON) -m pytest -q

lint:  ## static checks
	$(PYTHON) -m ruff check avdm tests benchmarks

format:  ## auto-format
	$(PYTHON) -m ruff check --fix avdm tests benchmarks
	$(PYTHON) -m ruff format avdm tests benchmarks

demo:  ## the main job on the embedded default (CPU)
	$(PYTHON) -m avdm.train +experiment=avdm2_tiny

bench:  ## benchmarks; results in benchmarks/results/
	$(PYTHON) -m benchmarks.run

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
