#!/usr/bin/env bash
# Experiment 1: accuracy against digit distance, ~0.5M-parameter models.
# Usage: experiments/long_range/run.sh [PARALLEL]   (runs go to $RUNS/MODEL_dD)
# then:  python experiments/long_range/report.py $RUNS
# CANVAS sets the canvas side (configs/longrange.py:MODEL,D,CANVAS); EXTRA holds further
# --config.* overrides for every run, e.g. EXTRA="--config.seed=1".
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
PARALLEL=${1:-4}
EPOCHS=${EPOCHS:-6}
CANVAS=${CANVAS:-64}
RUNS=${RUNS:-runs/long_range}
EXTRA=${EXTRA:-}
MODELS=${MODELS:-"resnet_micro convnext_micro hybrid_micro vit_micro"}
DISTANCES=${DISTANCES:-"14 30 48"}
mkdir -p "$RUNS"
jobs=()
for m in $MODELS; do
  for d in $DISTANCES; do
    jobs+=("$m,$d")
  done
done
export PY EPOCHS CANVAS RUNS EXTRA
printf '%s\n' "${jobs[@]}" | xargs -P "$PARALLEL" -I{} sh -c '
  arg={}; m=${arg%,*}; d=${arg#*,}
  start=$(date +%s)
  $PY -m cnn_jax.main --config configs/longrange.py:$arg,$CANVAS --workdir $RUNS/${m}_d$d \
      --config.num_epochs=$EPOCHS $EXTRA > $RUNS/${m}_d$d.log 2>&1 \
    && echo "done $arg $(( $(date +%s) - start )) s" || echo "FAILED $arg"'
