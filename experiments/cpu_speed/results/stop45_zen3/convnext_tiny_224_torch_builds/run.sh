#!/bin/bash
# The current code (7b6dbfd) against PyTorch 2.14.1+cu130 (stop 40's build) and 2.13.0+cpu, alternated.
OUT=/tmp/s45/vs_torch_builds; mkdir -p $OUT; cd /work/main
for i in 1 2; do
  for tp in 2141:/tmp/venv_torch215/bin/python 2130:/tmp/venv_torch/bin/python; do
    name=${tp%%:*}; py=${tp#*:}
    .venv/bin/python -m cnn_jax.bench --model convnext_tiny --batch_size 32 --image_size 224 \
      --steps 4 --warmup 1 --vs_torch --torch_python $py --json > $OUT/torch${name}_$i.json 2> $OUT/torch${name}_$i.err
    echo "$name $i $(date +%T) rc=$?" >> $OUT/log
  done
done
