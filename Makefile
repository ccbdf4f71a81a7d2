# One command each: `make` sets up and runs the main job (default `digits` profile, offline);
# `make test` sets up and runs the test suite.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
CORES ?= all

.PHONY: all setup run test bench

all: setup run

setup:
	$(PIP) install -e ".[test]"

run:
	snakemake --cores $(CORES)

test: setup
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) benchmarks/pairing.py
