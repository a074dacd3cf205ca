"""FCMAE step time / supervised step time for the same encoder, batch and resolution.

    python experiments/fcmae_speed/step_ratio.py MODEL BATCH STEPS [IMAGE_SIZE]

Both steps are built and compiled by `cnn_jax.bench.prepare_jax` (synthetic on-device batch,
AdamW, the base config's FCMAE settings: 60% mask, decoder one block of width 512); single steps
of the two alternate, so a change in the machine's load hits both alike. Prints the median of
the per-pair ratios and both medians.
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import bench  # noqa: E402


def main() -> None:
  model, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  image_size = int(sys.argv[4]) if len(sys.argv) > 4 else 224
  prepared = {mode: bench.prepare_jax(model, mode=mode, batch_size=batch,
                                      image_size=image_size, num_devices=1)
              for mode in ("train", "fcmae")}
  for step in prepared.values():
    step.time_steps(2)  # warm-up
  times = {mode: [] for mode in prepared}
  for _ in range(steps):
    for mode, step in prepared.items():
      times[mode] += step.time_steps(1)
  ratios = [f / t for f, t in zip(times["fcmae"], times["train"])]
  print(f"{model} batch {batch} at {image_size} px, {steps} pairs: FCMAE / supervised step "
        f"time = {statistics.median(ratios):.3f} (median of pairs; quartiles "
        f"{statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f});"
        f" medians {statistics.median(times['fcmae']):.3f} s vs "
        f"{statistics.median(times['train']):.3f} s")


if __name__ == "__main__":
  main()
