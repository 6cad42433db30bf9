PY := .venv/bin/python
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: setup demo test test-fast bench clean

setup:  ## create .venv and install everything (idempotent)
	@bash scripts/setup.sh

demo: setup  ## generate demo-experiment/, train it on digits, print metrics, write logs and plots
	$(PY) -m generator.demo demo-experiment

test: setup  ## the whole test suite
	$(PY) -m pytest -q -ra tests

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow" tests

bench: setup  ## benchmarks; regenerates the README performance table
	$(PY) bench/run_all.py

clean:
	rm -rf demo-experiment .pytest_cache .numba_cache
