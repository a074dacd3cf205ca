"""Summary statistics of measured step times, shared by the JAX benchmark (cnn_jax/bench.py) and
its PyTorch half (cnn_jax/bench_torch.py).

Standard library only: bench_torch.py runs in a Python that may have torch but neither jax nor
cnn_jax installed, and imports this file as its sibling.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def step_time_stats(times: Sequence[float]) -> dict[str, float]:
  """Median and spread of per-step times in seconds."""
  ordered = sorted(times)

  def quantile(q: float) -> float:
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

  median = statistics.median(ordered)
  return {"median": median, "mean": statistics.fmean(ordered), "min": ordered[0],
          "max": ordered[-1], "p10": quantile(0.1), "p90": quantile(0.9),
          "stdev": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
          "spread_pct": 100.0 * (quantile(0.9) - quantile(0.1)) / median if median else 0.0}
