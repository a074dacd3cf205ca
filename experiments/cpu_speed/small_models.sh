#!/usr/bin/env bash
# The small-model rows of experiments/cpu_speed/README.md (issue 21): each model's train step and
# inference, cnn_jax against PyTorch eager paired in one `bench --vs_torch` command, -> OUT/ROW.json.
#   TORCH_PY=/path/to/python-with-torch-and-timm bash experiments/cpu_speed/small_models.sh [OUT] [ROW...]
# ROWs: lenet5 resnet20 resnet56 plain56 (32 px, batch 128), resnet_micro convnext_micro_bn
# hybrid_micro vit_micro (the long-range experiment's models as configs/longrange.py builds them:
# 96 px canvas, 1 channel, 2 classes, its batch 64), atto_p1 atto_p2 (ConvNeXt V2-Atto, 32 px,
# patch_size 1|2, batch 128). STEPS (default 6) timed steps per framework and mode.
# Quote only runs on a quiet machine, 2 threads each (the issue's protocol): PyTorch's threads lose
# far more than XLA's to other jobs, and even `taskset -c 1` (one thread each) under load moved
# ratios by 1.5x (experiments/cpu_speed/README.md, "Read this first").
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-experiments/cpu_speed/results/small}
shift || true
ROWS=${*:-lenet5 resnet20 resnet56 plain56 resnet_micro convnext_micro_bn hybrid_micro vit_micro atto_p1 atto_p2}
PY=${PY:-python}
TORCH_PY=${TORCH_PY:-python}
STEPS=${STEPS:-6}
mkdir -p "$OUT"
bench() {  # ROW, then bench flags
  local row=$1; shift
  echo "$row: load $(cut -d' ' -f1 /proc/loadavg) at the start"
  $PY -m cnn_jax.bench "$@" --steps "$STEPS" --warmup 1 --vs_torch --torch_python "$TORCH_PY" \
    --json > "$OUT/$row.json"
}
longrange_options() {  # KEY -> (registry name, JSON options) of configs/longrange.py's MODELS
  $PY - "$1" <<'PY'
import json, sys
sys.path.insert(0, "configs")
from longrange import MODELS
options = dict(MODELS[sys.argv[1]], in_channels=1)
options.pop("image_size", None)  # bench sizes the model to --image_size
print(options.pop("name"), json.dumps(options))
PY
}
for row in $ROWS; do
  case $row in
    lenet5) bench "$row" --model lenet5 --batch_size 128 --image_size 32 --num_classes 10 \
              --model_options '{"in_channels": 1}' ;;
    resnet20|resnet56|plain56) bench "$row" --model "$row" --batch_size 128 --image_size 32 \
              --num_classes 10 ;;
    resnet_micro|convnext_micro_bn|hybrid_micro|vit_micro)
      read -r name options < <(longrange_options "$row")
      torch_model=$row
      [[ $row == hybrid_micro ]] && torch_model=hybrid_micro_bn  # the experiment's norm="bn"
      bench "$row" --model "$name" --model_options "$options" --torch_model "$torch_model" \
        --batch_size 64 --image_size 96 --num_classes 2 ;;
    atto_p1|atto_p2)
      patch="{\"patch_size\": ${row#atto_p}}"
      bench "$row" --model convnextv2_atto --model_options "$patch" --torch_options "$patch" \
        --batch_size 128 --image_size 32 --num_classes 10 ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
done
