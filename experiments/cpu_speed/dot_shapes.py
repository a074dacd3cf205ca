"""ConvNeXt-T's matmul shapes alone: XLA:CPU's dot (under the process's XLA_FLAGS) or PyTorch's
`torch.mm`, best and median of 8 calls after one, in GFLOP/s (README "The AVX-512 Intel").

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

# (name, lhs, rhs) of ConvNeXt-T at batch 32, 224 px: the inverted bottleneck's two dots and a
# kernel gradient at stage 1 (56x56, 96 -> 384 channels) and stage 3 (14x14, 384 -> 1536), and a
# square matmul, bench's peak probe.
SHAPES = (("stage 1 expand", (100352, 96), (96, 384)),
          ("stage 1 project", (100352, 384), (384, 96)),
          ("stage 1 kernel grad", (96, 100352), (100352, 384)),
          ("stage 3 expand", (6272, 384), (384, 1536)),
          ("stage 3 kernel grad", (384, 6272), (6272, 1536)),
          ("square 2048", (2048, 2048), (2048, 2048)))
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
    convert, call = torch.from_numpy, torch.mm
  elif framework == "jax":
    import jax
    import jax.numpy as jnp
    matmul = jax.jit(lambda a, b: a @ b)
    convert, call = jnp.asarray, lambda a, b: matmul(a, b).block_until_ready()
  else:
    raise SystemExit(f"error: framework {framework!r}: jax or torch")
  rng = np.random.default_rng(0)
  for name, lhs_shape, rhs_shape in SHAPES:
    lhs = convert(rng.standard_normal(lhs_shape, dtype=np.float32))
    rhs = convert(rng.standard_normal(rhs_shape, dtype=np.float32))
    best, median = best_and_median(call, lhs, rhs)
    flops = 2 * lhs_shape[0] * lhs_shape[1] * rhs_shape[1]
    print(f"{framework:5s} {name:20s} best {best * 1e3:6.1f} ms  median {median * 1e3:6.1f} ms  "
          f"{flops / best / 1e9:4.0f} GFLOP/s", flush=True)


if __name__ == "__main__":
  main()
