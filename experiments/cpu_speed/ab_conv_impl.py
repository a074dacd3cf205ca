"""A/B in one process: a model's train step with every conv as XLA's conv ("xla") vs with
layers.conv_general_dilated's CPU forms ("rewrite": depthwise by shifts, 1x1/patchify by matmul).

  python experiments/cpu_speed/ab_conv_impl.py [MODEL] [BATCH] [STEPS]

Both steps are `cnn_jax.bench.prepare_jax`'s (the training loop's train_step, AdamW, donated
state), compiled once each; then one step of A, one of B, in turn, so that a change in the
machine's load lands on both. Prints the median of each and of the per-pair ratios A/B.
"""

import statistics
import sys
import time

import jax

from cnn_jax import bench
from cnn_jax.models import layers


def main() -> None:
  model = sys.argv[1] if len(sys.argv) > 1 else "convnext_tiny"
  batch = int(sys.argv[2]) if len(sys.argv) > 2 else 16
  steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
  prepared = {}
  for impl in ("xla", "rewrite"):
    start = time.perf_counter()
    with layers.conv_impl(impl):
      prepared[impl] = bench.prepare_jax(model, batch_size=batch, image_size=224)
    print(f"{impl}: built and compiled in {time.perf_counter() - start:.1f} s", flush=True)
  times = {impl: [] for impl in prepared}
  for step in range(steps + 1):  # Step 0 of each is a warm-up.
    for impl, p in prepared.items():
      start = time.perf_counter()
      jax.block_until_ready(p.run_step())
      if step:
        times[impl].append(time.perf_counter() - start)
    print(f"step {step}: " + ", ".join(f"{i} {t[-1]:.2f} s" for i, t in times.items() if t),
          flush=True)
  medians = {impl: statistics.median(t) for impl, t in times.items()}
  pairs = [a / b for a, b in zip(times["xla"], times["rewrite"])]
  print(f"{model} batch {batch}, 224 px, train step: xla conv {medians['xla']:.2f} s, "
        f"rewrite {medians['rewrite']:.2f} s; speed-up {medians['xla'] / medians['rewrite']:.2f}x "
        f"(per pair min {min(pairs):.2f} median {statistics.median(pairs):.2f} "
        f"max {max(pairs):.2f})")


if __name__ == "__main__":
  main()
