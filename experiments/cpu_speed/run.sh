#!/usr/bin/env bash
# The CPU speed figures of experiments/cpu_speed/README.md (issue 11), into OUT (default
# experiments/cpu_speed/results); ResNet-50 and ConvNeXt-T, 224 px, float32, batch 32:
#  - cnn_jax against PyTorch eager in one command (--vs_torch: turns of a few steps each, train
#    and inference) -> MODEL.json;
#  - each framework alone, back-to-back steps as a training loop runs them: cnn_jax with its CPU
#    conv forms (conv_impl auto) and with XLA's convs (conv_impl xla), in separate processes,
#    two rounds -> alone_MODEL_{auto,xla}_ROUND.json; without the malloc settings
#    (CNN_JAX_HUGEPAGES=0) -> alone_MODEL_auto_hugepages0.json; PyTorch -> torch_alone_MODEL.json.
#   TORCH_PY=/path/to/python-with-torch-and-timm bash experiments/cpu_speed/run.sh [OUT]
# Run it on a quiet machine (~20 min): other jobs shift both frameworks' step times.
set -euo pipefail
OUT=${1:-experiments/cpu_speed/results}
TORCH_PY=${TORCH_PY:-python}
mkdir -p "$OUT"
uptime | tee "$OUT/load_start.txt"
SIZE=(--batch_size 32 --image_size 224)
for model in resnet50 convnext_tiny; do
  python -m cnn_jax.bench --model "$model" "${SIZE[@]}" --steps 6 --warmup 2 --vs_torch \
    --torch_python "$TORCH_PY" --json > "$OUT/$model.json"
done
alone() {  # MODEL CONV_IMPL FILE
  python -m cnn_jax.bench --model "$1" "${SIZE[@]}" --steps 5 --warmup 2 --conv_impl "$2" \
    --json > "$OUT/$3"
}
for round in 1 2; do
  for model in resnet50 convnext_tiny; do
    for impl in auto xla; do
      alone "$model" "$impl" "alone_${model}_${impl}_$round.json"
    done
  done
done
for model in resnet50 convnext_tiny; do
  CNN_JAX_HUGEPAGES=0 alone "$model" auto "alone_${model}_auto_hugepages0.json"
  "$TORCH_PY" cnn_jax/bench_torch.py --model "$model" --modes train,infer "${SIZE[@]}" \
    --steps 5 --warmup 3 > "$OUT/torch_alone_$model.json"
done
uptime | tee "$OUT/load_end.txt"
