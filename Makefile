# One command each: `make` sets up and runs the main job (default `digits` profile, offline);
# `make test` sets up and runs the test suite.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
CORES ?= all

.PHONY: all setup run test bench rehearsal gpu-check compare seeds

all: setup run

setup:
	$(PIP) install -e ".[test]"
	aot-diffusion offline-plots

run:
	snakemake --cores $(CORES)

test: setup
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=20

bench: setup
	$(PYTHON) benchmarks/pairing.py

# The cifar10 DAG at toy size on a CPU (a few minutes): the stand-in inputs, then every stage and `released`.
# It makes params.yaml the rehearsal's; `aot-diffusion params` composes the default again.
rehearsal: setup
	aot-diffusion rehearsal-inputs
	snakemake --cores $(CORES) --config profile=rehearsal released_pickle=data/rehearsal/network.pkl -- all released calibrate

# On a GPU machine: the rehearsal with device=cuda, then NCSN++ training / pairing / sampling throughput.
gpu-check: setup
	$(PYTHON) benchmarks/gpu_check.py --rehearsal

# DVC experiments side by side on one screen (src/aot_diffusion/report/compare.py): a row per parameter or
# headline metric that differs among them, a column per experiment. `make compare ARGS=--csv`: dvc's own CSV.
compare:
	aot-diffusion compare $(ARGS)

# More training seeds where the claim lives: every model at training seeds 0..K-1 (default 4). The seeds that
# exist are not retrained (a job's record does not hold train.seeds); the new seeds are trained, sampled and
# scored, and the tables' across-seed intervals (hierarchical bootstrap) cover all K. It changes the DAG's shape,
# so params.yaml and dvc.yaml are written for it first (both doors then agree); `aot-diffusion params &&
# aot-diffusion dvc-yaml` writes the default's back.
K ?= 4
seeds:
	aot-diffusion params --set 'train.seeds=[$(shell $(PYTHON) -c "print(*range($(K)), sep=\", \")")]'
	aot-diffusion dvc-yaml --from-params
	snakemake --cores $(CORES)
