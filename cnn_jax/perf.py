"""Performance figures: the two sides of model FLOPs utilisation (MFU), and XLA's own FLOP
count and memory of a compiled program.

MFU = model FLOPs per step / step time / peak FLOP/s. Model FLOPs: `cnn_jax.summary`'s count
(2 x the conv and matmul MACs of the forward); `forward_flops` counts them for a model that is
not in the registry. Peak: a table of dense data-sheet peaks for GPUs and TPUs (`PEAK_FLOPS`);
on CPU, the best of a few large jitted matmuls measured in the same process; an explicit figure
overrides both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax import summary
from cnn_jax.models import layers

# Dense peak FLOP/s per chip (no structured sparsity), from the vendors' data sheets, keyed by
# a lower-case substring of `device.device_kind`; the first match wins, so specific names
# (h100 pcie) come before general ones (h100). float32 on NVIDIA Ampere and later is the TF32
# tensor-core peak: XLA's default matmul/conv precision lets cuBLAS/cuDNN use TF32. On TPUs
# float32 matmuls run as bfloat16 passes at default precision, so the bf16 peak is listed.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h100 pcie", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("h100", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("h200", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("gh200", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("b200", {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    ("a100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("a10g", {"bfloat16": 70e12, "float16": 70e12, "float32": 35e12}),
    ("l40s", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    ("l4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("a10", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    ("v100", {"float16": 125e12, "bfloat16": 125e12, "float32": 15.7e12}),
    ("t4", {"float16": 65e12, "bfloat16": 65e12, "float32": 8.1e12}),
    ("rtx 4090", {"bfloat16": 165e12, "float16": 165e12, "float32": 82.6e12}),
    ("rtx 3090", {"bfloat16": 71e12, "float16": 71e12, "float32": 35.6e12}),
    ("tpu v6", {"bfloat16": 918e12, "float16": 918e12, "float32": 918e12}),
    ("tpu v5p", {"bfloat16": 459e12, "float16": 459e12, "float32": 459e12}),
    ("tpu v5 lite", {"bfloat16": 197e12, "float16": 197e12, "float32": 197e12}),
    ("tpu v5e", {"bfloat16": 197e12, "float16": 197e12, "float32": 197e12}),
    ("tpu v4", {"bfloat16": 275e12, "float16": 275e12, "float32": 275e12}),
    ("tpu v3", {"bfloat16": 123e12, "float16": 123e12, "float32": 123e12}),
    ("tpu v2", {"bfloat16": 45e12, "float16": 45e12, "float32": 45e12}),
)


def table_peak_flops(device_kind: str, dtype: str) -> float | None:
  """The data-sheet peak of one chip for `dtype`, or None for a device not in the table."""
  kind = device_kind.lower()
  for key, peaks in PEAK_FLOPS:
    if key in kind:
      return peaks.get(dtype)
  return None


def measure_cpu_matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 4) -> float:
  """FLOP/s of the fastest of a few jitted size x size matmuls on the default CPU device.

  The fastest, not the median: the peak is what the hardware can do, and on a shared machine
  slower repeats measure the neighbours, not the CPU."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


def peak_flops(devices: Sequence[Any], dtype: str, override: float | None = None
               ) -> tuple[float | None, str]:
  """(peak FLOP/s of all `devices` together, where the figure comes from)."""
  if override:
    return float(override), "--peak_flops"
  if devices[0].platform == "cpu":
    # The fake CPU devices of --xla_force_host_platform_device_count share the same cores:
    # the peak is the host's, not per device.
    return measure_cpu_matmul_peak(dtype), "measured: best 2048x2048 jitted matmul"
  kind = devices[0].device_kind
  per_chip = table_peak_flops(kind, dtype)
  if per_chip is None:
    return None, f"unknown device kind {kind!r} (pass --peak_flops)"
  return per_chip * len(devices), f"data sheet: {kind} x {len(devices)}"


def forward_flops(graphdef: nnx.GraphDef, params: nnx.State, model_state: nnx.State,
                  input_shape: tuple[int, ...]) -> int:
  """2 x the conv/matmul MACs of one forward of the model, counted as `summary` counts them."""
  with layers.conv_impl("xla"):  # Depthwise convs as conv equations, so their MACs count.
    closed = jax.make_jaxpr(lambda p, s, x: nnx.merge(graphdef, p, s)(x))(
        params, model_state, jax.ShapeDtypeStruct(input_shape, jnp.float32))
  stats: dict[str, Any] = {}
  summary.walk_jaxpr(closed.jaxpr, stats, set())
  return 2 * sum(s.macs for s in stats.values())


def xla_flops(compiled: Any) -> float | None:
  """XLA's count of the FLOPs of a compiled program, or None where the backend has none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Not every backend implements it; the figure is informative only.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def memory_figures(compiled: Any, devices: Sequence[Any]) -> dict[str, Any]:
  """Peak device memory: the allocator's own peak where the backend keeps one (GPU, TPU),
  else XLA's static estimate of the compiled step (arguments + outputs + temporaries)."""
  out: dict[str, Any] = {"peak_device_bytes": None, "peak_device_source": None,
                         "xla_estimate_bytes": None}
  try:
    analysis = compiled.memory_analysis()
    if analysis is not None:
      out["xla_estimate_bytes"] = int(
          analysis.argument_size_in_bytes + analysis.output_size_in_bytes
          + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  except Exception:  # Optional in PJRT; leave the field empty.
    pass
  stats = [d.memory_stats() for d in devices]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s]
  if peaks and all(p is not None for p in peaks):
    out["peak_device_bytes"] = int(max(peaks))
    out["peak_device_source"] = "allocator peak_bytes_in_use (max over devices)"
  elif out["xla_estimate_bytes"] is not None:
    out["peak_device_bytes"] = out["xla_estimate_bytes"]
    out["peak_device_source"] = "XLA memory_analysis of the step (no allocator stats)"
  return out
