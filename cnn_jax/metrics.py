"""Where metrics go: TensorBoard event files, a JSON-lines file, and a progress line.

Only process 0 writes; the others get a writer that drops everything.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

import jax
import numpy as np


class MetricWriter:
  """Writes scalars to `workdir/tensorboard` (tensorboardX) and `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # Heavy import only where it is used.

    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(k, v, step)
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """Images HWC float in [0, 1] or uint8."""
    if not self.enabled:
      return
    for k, v in images.items():
      self._tb.add_image(k, np.asarray(v), step, dataformats="HWC")

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
  """One line per report: step/total, percentage, elapsed, ETA and the latest metrics."""

  def __init__(self, total_steps: int, start_step: int, *, stream: TextIO = sys.stdout,
               enabled: bool | None = None):
    self.total_steps = total_steps
    self.start_step = start_step
    self.stream = stream
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._t0 = time.perf_counter()

  def report(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self._t0
    done = step - self.start_step
    eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in scalars.items())
    eta_text = _format_seconds(eta) if done > 0 else "?"
    print(f"[{step:>{len(str(self.total_steps))}d}/{self.total_steps} "
          f"{100 * step / self.total_steps:5.1f}%  {_format_seconds(elapsed)} elapsed, "
          f"eta {eta_text}]  {metrics}", file=self.stream, flush=True)


def window_means(window: list[dict[str, Any]]) -> dict[str, float]:
  """Means over a logging window of per-step metrics still on the device: one transfer at
  logging time, summed on the host in the metrics' dtype and in step order, which is what an
  on-device running sum gave (same bits), without an op dispatched per step."""
  host = jax.device_get(window)
  sums = host[0]
  for step_metrics in host[1:]:
    sums = {k: np.add(sums[k], v) for k, v in step_metrics.items()}
  return {k: float(v) / len(window) for k, v in sums.items()}
