"""Summary statistics of measured step times, shared by the JAX benchmark (cnn_jax/bench.py) and
its PyTorch half (cnn_jax/bench_torch.py).

Standard library only: bench_torch.py runs in a Python that may have torch but neither jax nor
cnn_jax installed, and imports this file as its sibling.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence


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


class PhaseClock:
  """Wall and CPU seconds (this process, all its threads) per named phase of a run; `steps`
  is what is left of the whole after the named phases. CPU time is the figure that holds
  on a shared machine, where wall time depends on the other jobs."""

  def __init__(self):
    self.start = self._now()
    self.totals: dict[str, tuple[float, float]] = {}

  @staticmethod
  def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    start = self._now()
    try:
      yield
    finally:
      end = self._now()
      wall, cpu = self.totals.get(name, (0.0, 0.0))
      self.totals[name] = (wall + end[0] - start[0], cpu + end[1] - start[1])

  def split(self, name: str) -> None:
    """The time since the start that no phase holds yet becomes phase `name`."""
    rest = self.record(name)
    self.totals[name] = (rest[f"time/{name}_s"], rest[f"time/{name}_cpu_s"])

  def wall(self, *names: str) -> float:
    return sum(self.totals.get(name, (0.0, 0.0))[0] for name in names)

  def record(self, rest: str = "steps") -> dict[str, float]:
    """{time/NAME_s, time/NAME_cpu_s} for every phase, `rest` being the time since the start
    outside the others."""
    end = self._now()
    rest_wall = end[0] - self.start[0] - sum(w for w, _ in self.totals.values())
    rest_cpu = end[1] - self.start[1] - sum(c for _, c in self.totals.values())
    out = {}
    for name, (wall, cpu) in {**self.totals, rest: (rest_wall, rest_cpu)}.items():
      out[f"time/{name}_s"], out[f"time/{name}_cpu_s"] = wall, cpu
    return out


def loop_time_summary(times: dict[str, float], steps: int) -> str:
  """One line saying where a training run's time went, from the loop's `time/*` record
  (cnn_jax/train.py); `steps`: the steps after the first."""
  rates = (f" ({1e3 * times['time/steps_s'] / steps:.1f} ms/step, "
           f"{1e3 * times['time/steps_cpu_s'] / steps:.1f} ms CPU, with data, metrics and "
           "checkpoints)") if steps else ""
  return (f"time: setup {times['time/setup_s']:.1f} s, compile + first step "
          f"{times.get('time/first_step_s', 0.0):.1f} s, {steps} more steps "
          f"{times['time/steps_s']:.1f} s{rates}, eval "
          f"{times.get('time/eval_s', 0.0):.1f} s, final checkpoint wait "
          f"{times['time/checkpoint_wait_s']:.1f} s")
