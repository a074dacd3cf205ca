"""Training batches/s of an embedded config through the data pipeline, and what grain's
per-element shuffle + batch would cost for the same batches (the index plumbing alone).

  python experiments/data_batching/batch_rate.py [--config configs/lenet5_mnist.py] [--batches 400]
"""

import argparse
import os
import sys
import time

import grain
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from cnn_jax import cli, data  # noqa: E402


def best_rate(make, n: int, repeats: int = 3) -> float:
  """Best of `repeats` runs of n calls of make(i), in calls/s (the machine is shared)."""
  best = 0.0
  for _ in range(repeats):
    start = time.perf_counter()
    for i in range(n):
      make(i)
    best = max(best, n / (time.perf_counter() - start))
  return best


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/lenet5_mnist.py")
  parser.add_argument("--batches", type=int, default=400)
  args = parser.parse_args()
  config = cli.load_config_file(args.config)
  train, _, info = data.create_datasets(config)
  n = args.batches
  print(f"{args.config}: {info.num_train} records, batch {config.data.batch_size}")
  print(f"  train.batch(step)            {best_rate(train.batch, n):8.0f} batches/s")
  it = train.iterate(0)
  next(it)
  print(f"  train.iterate() (threads)    {best_rate(lambda _: next(it), n):8.0f} batches/s")
  g = config.data.batch_size
  indices = (grain.MapDataset.range(info.num_train).seed(config.seed).shuffle()
             [:train.steps_per_epoch * g].repeat().batch(g, batch_fn=np.asarray))
  print(f"  grain shuffle+batch, indices {best_rate(lambda s: indices[s], max(1, n // 10)):8.0f}"
        " batches/s")


if __name__ == "__main__":
  main()
