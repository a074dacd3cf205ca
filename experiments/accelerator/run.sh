#!/usr/bin/env bash
# The accelerator check (see README.md beside this file): run from the repository root on a
# GPU/TPU host after `make venv`; OUT defaults to runs/accelerator.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
exec "$PY" experiments/accelerator/run.py --out "${OUT:-runs/accelerator}" "$@"
