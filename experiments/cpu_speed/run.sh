#!/usr/bin/env bash
# The CPU speed figures of README "Benchmarks" (issue 11), into OUT (default
# experiments/cpu_speed/results): cnn_jax against PyTorch eager in the same command (ResNet-50
# and ConvNeXt-T, train + inference, 224 px, float32; batch 32, and ResNet-50 at batch 16 with
# and without huge pages), cnn_jax alone at batch 16 with and without huge pages, and the A/B
# of the models' CPU conv forms (layers.conv_impl "xla" vs "rewrite").
#   TORCH_PY=/path/to/python-with-torch-and-timm bash experiments/cpu_speed/run.sh [OUT]
# Run it on a quiet machine: other jobs shift both frameworks' step times.
set -euo pipefail
OUT=${1:-experiments/cpu_speed/results}
TORCH_PY=${TORCH_PY:-python}
mkdir -p "$OUT"
uptime | tee "$OUT/load_start.txt"
vs_torch() {  # MODEL BATCH -> JSON on stdout
  python -m cnn_jax.bench --model "$1" --batch_size "$2" --image_size 224 --steps 3 --warmup 1 \
    --vs_torch --torch_python "$TORCH_PY" --json
}
for model in resnet50 convnext_tiny; do
  vs_torch "$model" 32 > "$OUT/$model.json"
done
vs_torch resnet50 16 > "$OUT/resnet50_b16.json"
# The PyTorch worker inherits the environment, so neither framework gets huge pages here.
CNN_JAX_HUGEPAGES=0 vs_torch resnet50 16 > "$OUT/resnet50_b16_no_hugepages.json"
for hugepages in 0 1; do
  for model in resnet50 convnext_tiny; do
    CNN_JAX_HUGEPAGES=$hugepages python -m cnn_jax.bench --model "$model" --batch_size 16 \
      --steps 3 --warmup 1 --json > "$OUT/alone_${model}_b16_hugepages$hugepages.json"
  done
done
# The A/B script is not a `python -m cnn_jax.*` tool, so it gets huge pages explicitly.
for model in resnet50 convnext_tiny; do
  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 PYTHONPATH=. \
    python experiments/cpu_speed/ab_conv_impl.py "$model" 16 4 > "$OUT/ab_${model}_b16.txt"
done
uptime | tee "$OUT/load_end.txt"
