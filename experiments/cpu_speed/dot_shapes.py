"""ConvNeXt-T's matmul shapes alone: XLA:CPU's dot (under the process's XLA_FLAGS) or PyTorch's
`torch.mm`, best and median of 8 calls after one, in GFLOP/s (README "The AVX-512 Intel" and
stop 41, the kernel gradients as the train step computes them).

  python experiments/cpu_speed/dot_shapes.py jax            # YNNPACK's dots (cnn_jax's flags)
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-individual_dot \
      python experiments/cpu_speed/dot_shapes.py jax        # XLA's own (Eigen) dots
  /path/to/python-with-torch experiments/cpu_speed/dot_shapes.py torch

Run it with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, as the tools run themselves: each call
allocates its output afresh, and the stage-1 outputs are 150 MB.
"""

import sys
import time

import numpy as np

# ConvNeXt-T's stages at batch 32, 224 px: (stage, rows = 32 x H x W, width); each block's
# inverted bottleneck expands width -> 4 x width and projects back.
STAGES = ((1, 100352, 96), (2, 25088, 192), (3, 6272, 384), (4, 1568, 768))
# (name, lhs, rhs, lhs read transposed): every stage's two forward dots; a kernel gradient at
# stages 1 and 3 with its lhs laid out transposed; a square matmul (bench's peak probe); and every
# Linear's kernel gradient as the train step computes it, x^T dy with x (rows, C) read in place:
# XLA:CPU's YNNPACK dots take no transposed lhs, so these run on Eigen (PyTorch's autograd runs
# dy^T x on its sgemm, the same product transposed).
_BOTTLENECK = tuple((stage, rows, name, cin, cout) for stage, rows, width in STAGES
                    for name, cin, cout in (("expand", width, 4 * width),
                                            ("project", 4 * width, width)))
SHAPES = (*((f"stage {stage} {name}", (rows, cin), (cin, cout), False)
            for stage, rows, name, cin, cout in _BOTTLENECK),
          ("stage 1 kernel grad", (96, 100352), (100352, 384), False),
          ("stage 3 kernel grad", (384, 6272), (6272, 1536), False),
          ("square 2048", (2048, 2048), (2048, 2048), False),
          *((f"stage {stage} {name} x^T dy", (rows, cin), (rows, cout), True)
            for stage, rows, name, cin, cout in _BOTTLENECK))
CALLS = 8


def best_and_median(call, lhs, rhs) -> tuple[float, float]:
  call(lhs, rhs)
  times = []
  for _ in range(CALLS):
    start = time.perf_counter()
    call(lhs, rhs)
    times.append(time.perf_counter() - start)
  return min(times), sorted(times)[CALLS // 2]


def main() -> None:
  framework = sys.argv[1] if len(sys.argv) > 1 else "jax"
  if framework == "torch":
    import torch
    convert = torch.from_numpy
    calls = {False: torch.mm, True: lambda a, b: torch.mm(b.t(), a)}
  elif framework == "jax":
    import jax
    import jax.numpy as jnp
    matmuls = {False: jax.jit(lambda a, b: a @ b), True: jax.jit(lambda a, b: a.T @ b)}
    convert = jnp.asarray
    calls = {transposed: lambda a, b, m=m: m(a, b).block_until_ready()
             for transposed, m in matmuls.items()}
  else:
    raise SystemExit(f"error: framework {framework!r}: jax or torch")
  rng = np.random.default_rng(0)
  for name, lhs_shape, rhs_shape, transposed in SHAPES:
    lhs = convert(rng.standard_normal(lhs_shape, dtype=np.float32))
    rhs = convert(rng.standard_normal(rhs_shape, dtype=np.float32))
    best, median = best_and_median(calls[transposed], lhs, rhs)
    flops = 2 * lhs_shape[0] * lhs_shape[1] * rhs_shape[1]
    print(f"{framework:5s} {name:28s} best {best * 1e3:6.1f} ms  median {median * 1e3:6.1f} ms  "
          f"{flops / best / 1e9:4.0f} GFLOP/s", flush=True)


if __name__ == "__main__":
  main()
