"""One conv alone, each form: XLA's op, the CPU form of cnn_jax/models/cpu_ops.py and oneDNN's
(cnn_jax/models/onednn.py), forward and forward + both gradients, median ms of alternating
rounds, on the CIFAR ResNets' shapes (batch 128) and ResNet-50's at 224 px (batch 32).

  python experiments/cpu_speed/conv_forms.py [--rounds 15] [--shapes cifar|resnet50|all]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from cnn_jax import hostenv  # noqa: E402

hostenv.set_xla_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax.models import layers  # noqa: E402

# (batch, size, in channels, out channels, kernel, stride)
SHAPES = {
    "cifar": [(128, 32, 16, 16, 3, 1), (128, 16, 32, 32, 3, 1), (128, 8, 64, 64, 3, 1),
              (128, 32, 16, 32, 3, 2), (128, 16, 32, 64, 3, 2), (128, 32, 3, 16, 3, 1)],
    "resnet50": [(32, 224, 3, 64, 7, 2), (32, 56, 64, 64, 3, 1), (32, 56, 64, 256, 1, 1),
                 (32, 28, 128, 128, 3, 1), (32, 14, 256, 256, 3, 1), (32, 7, 512, 512, 3, 1)],
}


def _conv(impl: str, stride: int, kernel: int):
  pad = (kernel - 1) // 2  # PyTorch's padding, as the models' convs.
  padding = ((pad, pad), (pad, pad))

  def conv(x, w):
    with layers.conv_impl(impl):
      return layers.conv_general_dilated(x, w, (stride, stride), padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return conv


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--shapes", choices=["cifar", "resnet50", "all"], default="cifar")
  args = parser.parse_args()
  shapes = sum(SHAPES.values(), []) if args.shapes == "all" else SHAPES[args.shapes]
  impls = ("xla", "rewrite", "onednn")
  print(f"jax {jax.__version__}, {hostenv.cpu_key()}")
  print("| shape (NHWC -> C', k, stride) | " + " | ".join(
      f"{impl} fwd / fwd+grads ms" for impl in impls) + " |")
  print("|---|" + "---|" * len(impls))
  for n, size, cin, cout, k, stride in shapes:
    kx, kw, kd = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, size, size, cin))
    w = jax.random.normal(kw, (k, k, cin, cout))
    steps = {}
    for impl in impls:
      conv = _conv(impl, stride, k)
      dy = jax.random.normal(kd, jax.eval_shape(conv, x, w).shape)
      steps[impl, "fwd"] = (jax.jit(conv), (x, w))
      steps[impl, "grads"] = (jax.jit(lambda x, w, dy, conv=conv: jax.vjp(conv, x, w)[1](dy)),
                              (x, w, dy))
    times = {key: [] for key in steps}
    for step, operands in steps.values():
      jax.block_until_ready(step(*operands))
    for _ in range(args.rounds):
      for key, (step, operands) in steps.items():
        start = time.perf_counter()
        jax.block_until_ready(step(*operands))
        times[key].append(time.perf_counter() - start)
    ms = {key: 1e3 * float(np.median(t)) for key, t in times.items()}
    print(f"| {n}x{size}x{size}x{cin} -> {cout}, {k}x{k}, {stride} | " + " | ".join(
        f"{ms[impl, 'fwd']:.1f} / {ms[impl, 'grads']:.1f}" for impl in impls) + " |",
        flush=True)


if __name__ == "__main__":
  main()
