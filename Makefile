# Two commands set up a fresh machine: `make train` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CONFIG ?= configs/lenet5_mnist.py
WORKDIR ?= runs/lenet5_mnist
# Test workers: two processes on a 2-core machine; override with `make test WORKERS=1`.
WORKERS ?= 2
# pytest runs the steps in its own processes: give them the malloc settings that cnn_jax's tools
# set for themselves (hostenv.MALLOC_TUNABLES, read when a recipe runs, after the venv is made);
# glibc < 2.35 ignores the huge-page one.
TUNABLES = $(shell $(PY) -c 'import cnn_jax.hostenv as h; print(":".join(h.MALLOC_TUNABLES))')
MALLOC = GLIBC_TUNABLES=$(TUNABLES)

.PHONY: venv venv-cuda train test test-slow test-slurm clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; run with PYTHON=/path/to/python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# An NVIDIA GPU host: JAX's CUDA 12 plugin for the pinned jax, CUDA's libraries from PyPI.
venv-cuda: $(VENV)/.installed-cuda

$(VENV)/.installed-cuda: $(STAMP) requirements-cuda.txt
	$(PY) -m pip install --quiet -r requirements-cuda.txt
	touch $@

train: $(STAMP)
	$(PY) -m cnn_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: $(STAMP)
	$(MALLOC) $(PY) -m pytest -n $(WORKERS) --durations=40 tests

# Heavier checks, kept runnable by hand (not part of `make test`).
test-slow: $(STAMP)
	$(MALLOC) $(PY) -m pytest -m slow tests

# A real one-node SLURM (Debian's slurm-wlm + munge, installed and started as root by
# tests/slurm/start.sh) and the tests that submit to it: a sweep as a job array, a 2-task
# jax.distributed run, a preempted point requeued (docs/clusters.md).
test-slurm: $(STAMP)
	bash tests/slurm/start.sh
	$(MALLOC) $(PY) -m pytest -p no:xdist -m slurm --durations=5 tests/slurm

clean:
	rm -rf $(VENV) runs
