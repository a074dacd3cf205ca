#!/bin/bash
# Alternated processes: A = the copy probe (worktree), B = 7b6dbfd (main); bench --vs_torch each.
OUT=/tmp/s45/pairs; mkdir -p $OUT
for i in 1 2; do
  for arm in A B; do
    dir=/work/main; [ $arm = A ] && dir=/tmp/s45/wtA
    cd $dir
    /work/main/.venv/bin/python -m cnn_jax.bench --model convnext_tiny --batch_size 32 --image_size 224 \
      --steps 4 --warmup 1 --vs_torch --torch_python /tmp/venv_torch/bin/python --json \
      > $OUT/${arm}_$i.json 2> $OUT/${arm}_$i.err
    echo "$arm $i $(date +%T) rc=$?" >> $OUT/log
  done
done
