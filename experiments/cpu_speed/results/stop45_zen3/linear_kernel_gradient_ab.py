"""A/B in one process (stop 45): the train step with Linear's kernel gradient from a transposed
copy (autotuned per shape) against XLA's dot, alternated rounds. Needs the probe applied
(git apply linear_kernel_gradient_from_copy_probe.diff):

  GLIBC_TUNABLES=... ROUNDS=4 python linear_kernel_gradient_ab.py convnext_tiny 32 224 1000
  GLIBC_TUNABLES=... ROUNDS=4 python linear_kernel_gradient_ab.py vit_micro_patch8_64 64 96 2 \
      '{"in_channels": 1}'
"""
import os, sys, json, time
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))
from cnn_jax import hostenv
hostenv.set_xla_flags()
hostenv.run_cpu_inline_if_the_heap_keeps_temporaries()
import jax, numpy as np
from cnn_jax import bench
from cnn_jax.models import layers
model, bs, img, nc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
opts = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
rounds, per = int(os.environ.get("ROUNDS", 6)), int(os.environ.get("PER", 2))
new_dot = layers.linear_dot_general
def build(dot):
  layers.linear_dot_general = dot
  with layers.conv_impl("auto"):
    p = bench.prepare_jax(model, mode="train", batch_size=bs, image_size=img, num_classes=nc,
                          num_devices=1, model_kwargs=opts)
  layers.linear_dot_general = new_dot
  return p
plain = lambda l, r, d, precision=None, **k: jax.lax.dot_general(l, r, d, precision=precision, **k)
A = build(new_dot); B = build(plain)
for p in (A, B):
  for _ in range(2): jax.block_until_ready(p.run_step())
ta, tb = [], []
for r in range(rounds):
  order = ((A, ta), (B, tb)) if r % 2 == 0 else ((B, tb), (A, ta))
  for p, t in order:
    t.extend(p.time_steps(per))
ma, mb = np.median(ta), np.median(tb)
print(f"{model} b{bs} {img}px: copied-kernel-gradient median {ma*1e3:.1f} ms "
      f"(min {min(ta)*1e3:.1f}), "
      f"XLA dot median {mb*1e3:.1f} ms (min {min(tb)*1e3:.1f}); XLA/copied {mb/ma:.3f}", flush=True)
