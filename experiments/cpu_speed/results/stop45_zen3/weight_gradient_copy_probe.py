"""x^T dy alone (stop 45): XLA's Eigen dot against the narrower of x and dy copied transposed
behind an optimization_barrier, then a dot that YNNPACK takes; ConvNeXt-T's (batch 32, 224 px)
and vit_micro's (batch 64, 96 px) kernel-gradient shapes, 10 alternated calls.

  GLIBC_TUNABLES=... python weight_gradient_copy_probe.py [NAME_PART ...]
"""
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 4)))
from cnn_jax import hostenv  # noqa: E402

hostenv.set_xla_flags()
hostenv.run_cpu_inline_if_the_heap_keeps_temporaries()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def eigen(x, dy):
  return x.T @ dy


def narrow_copied(x, dy):
  if x.shape[1] <= dy.shape[1]:
    xt = jax.lax.optimization_barrier(jnp.transpose(x))
    return xt @ dy
  dyt = jax.lax.optimization_barrier(jnp.transpose(dy))
  return jnp.transpose(jax.lax.optimization_barrier(dyt @ x))


SHAPES = [("cnx s1 expand", 100352, 96, 384), ("cnx s1 project", 100352, 384, 96),
          ("cnx s2 expand", 25088, 192, 768), ("cnx s2 project", 25088, 768, 192),
          ("cnx s3 expand", 6272, 384, 1536), ("cnx s3 project", 6272, 1536, 384),
          ("cnx s4 expand", 1568, 768, 3072), ("cnx s4 project", 1568, 3072, 768),
          ("vit qkv", 9280, 96, 288), ("vit proj", 9280, 96, 96), ("vit fc1", 9280, 96, 384),
          ("vit fc2", 9280, 384, 96)]
only = sys.argv[1:]
rng = np.random.default_rng(0)
fa, fb = jax.jit(eigen), jax.jit(narrow_copied)
for name, n, cin, cout in SHAPES:
  if only and not any(o in name for o in only):
    continue
  x = jnp.asarray(rng.standard_normal((n, cin), dtype=np.float32))
  dy = jnp.asarray(rng.standard_normal((n, cout), dtype=np.float32))
  ca, cb = fa.lower(x, dy).compile(), fb.lower(x, dy).compile()
  if name in ("vit qkv", "vit fc2", "cnx s1 project"):
    text = cb.as_text()
    print("  B kinds:", sorted(k for k in ["ynn_fusion", "transpose", "copy", "dot("] if k in text))
  ra, rb = np.asarray(ca(x, dy)), np.asarray(cb(x, dy))
  err = float(np.max(np.abs(ra - rb)) / np.max(np.abs(ra)))
  ta, tb = [], []
  for r in range(10):
    for c, t in ((ca, ta), (cb, tb)) if r % 2 == 0 else ((cb, tb), (ca, ta)):
      s = time.perf_counter()
      c(x, dy).block_until_ready()
      t.append(time.perf_counter() - s)
  ma, mb = sorted(ta)[5], sorted(tb)[5]
  print(f"{name:16s} eigen min {min(ta)*1e3:7.2f} med {ma*1e3:7.2f} | copied+ynn min "
        f"{min(tb)*1e3:7.2f} med {mb*1e3:7.2f}  ratio(med) {ma/mb:.2f}  relerr {err:.1e}",
        flush=True)
