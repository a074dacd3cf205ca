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

# (name, lhs, rhs, lhs read transposed) of ConvNeXt-T at batch 32, 224 px: the inverted
# bottleneck's two dots and a kernel gradient (its lhs laid out transposed) at stage 1 (56x56,
# 96 -> 384 channels) and stage 3 (14x14, 384 -> 1536), a square matmul (bench's peak probe),
# the other stages' forward dots, and every Linear's kernel gradient as the train step computes it, x^T dy with x (rows, C)
# read in place: XLA:CPU's YNNPACK dots take no transposed lhs, so these run on Eigen (PyTorch's
# autograd runs dy^T x on its sgemm, the same product transposed).
SHAPES = (("stage 1 expand", (100352, 96), (96, 384), False),
          ("stage 1 project", (100352, 384), (384, 96), False),
          ("stage 1 kernel grad", (96, 100352), (100352, 384), False),
          ("stage 3 expand", (6272, 384), (384, 1536), False),
          ("stage 3 kernel grad", (384, 6272), (6272, 1536), False),
          ("square 2048", (2048, 2048), (2048, 2048), False),
          *((f"stage {stage} {name}", (rows, cin), (cin, cout), False)
            for stage, rows, width in ((2, 25088, 192), (3, 6272, 384), (4, 1568, 768))
            for name, cin, cout in (("expand", width, 4 * width), ("project", 4 * width, width))
            if (stage, name) != (3, "expand")),
          *((f"stage {stage} {name} x^T dy", (rows, cin), (rows, cout), True)
            for stage, rows, width in ((1, 100352, 96), (2, 25088, 192), (3, 6272, 384),
                                       (4, 1568, 768))
            for name, cin, cout in (("expand", width, 4 * width),
                                    ("project", 4 * width, width))))
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
