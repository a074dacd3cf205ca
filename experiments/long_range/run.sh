#!/usr/bin/env bash
# Experiment 1: accuracy against digit distance, four ~0.5M-parameter models.
# Usage: experiments/long_range/run.sh [PARALLEL]   (runs go to runs/long_range/MODEL_dD)
# then:  python experiments/long_range/report.py
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
PARALLEL=${1:-4}
EPOCHS=${EPOCHS:-6}
MODELS=${MODELS:-"resnet_micro convnext_micro hybrid_micro vit_micro"}
DISTANCES=${DISTANCES:-"14 30 48"}
mkdir -p runs/long_range
jobs=()
for d in $DISTANCES; do
  for m in $MODELS; do
    jobs+=("$m,$d")
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P "$PARALLEL" -I{} sh -c '
  arg={}; m=${arg%,*}; d=${arg#*,}
  '"$PY"' -m cnn_jax.main --config configs/longrange.py:$arg --workdir runs/long_range/${m}_d$d \
      --config.num_epochs='"$EPOCHS"' > runs/long_range/${m}_d$d.log 2>&1 \
    && echo "done $arg" || echo "FAILED $arg"'
