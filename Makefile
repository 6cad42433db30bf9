PY := .venv/bin/python
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: setup demo test test-all bench clean

setup:  ## create .venv and install everything (idempotent)
	@bash scripts/setup.sh

demo: setup  ## generate demo-experiment/, train it on digits, print metrics, write logs and plots
	$(PY) -m torchstrap.generator.demo demo-experiment

test: setup  ## the whole test suite (tests marked slow excluded; see test-all)
	$(PY) -m pytest -q -ra -m "not slow" tests

test-all: setup  ## every test, the slow generation matrix and long checks included
	$(PY) -m pytest -q -ra tests

bench: setup  ## benchmarks; regenerates the README performance table
	$(PY) bench/run_all.py

clean:
	rm -rf demo-experiment .pytest_cache .numba_cache
