"""Where a compiled step's time goes on CPU: XLA:CPU's kernels per step, grouped by kind (the
oneDNN convs' `ffi_call`, YNNPACK's `ynn_fusion`, XLA's own fusions and dots), from a
`jax.profiler` trace of the step `bench` times (the training loop's own functions).

  python experiments/cpu_speed/kernel_profile.py --model resnet20 --batch_size 128 \\
      --image_size 32 --num_classes 10
  python experiments/cpu_speed/kernel_profile.py --model vit_micro_patch8_64 --batch_size 64 \\
      --image_size 96 --num_classes 2 --model_options '{"in_channels": 1}' --top 30

Prints the step's wall time under the profiler, each kind's time per step summed over XLA's
worker threads (from each kernel's launch to its end) with its share and count, the kinds that
ran side by side most, and how much of the custom calls' time ran beside another custom call
(XLA runs independent kernels at once: they then share the cores; two oneDNN calls, two
OpenMP teams). Times under the profiler run above the bench's; the shares are what to read. Run it
with `GLIBC_TUNABLES` holding `hostenv.MALLOC_TUNABLES`, as `bench` runs itself.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import hostenv  # noqa: E402

hostenv.set_xla_flags()
hostenv.run_cpu_inline_if_the_heap_keeps_temporaries()  # As bench, under its malloc settings.

import jax  # noqa: E402  (after the XLA flags)

from cnn_jax import bench, train  # noqa: E402
from cnn_jax.models import layers  # noqa: E402

WORKER_THREAD = "XLAEigen"  # XLA:CPU's intra-op pool, where the kernels run.


def kernel_kind(name: str) -> str:
  """`broadcast_add_fusion.12`, `ffi_call.57`, `cond.29.clone` -> `broadcast_add_fusion`,
  `ffi_call`, `cond.clone`."""
  return re.sub(r"\.\d+", "", name)


def trace_events(trace_dir: str) -> list[dict]:
  [path] = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


# Spans of XLA's thread pool and of YNNPACK's waits inside a kernel, not kernels of their own.
NOT_KERNELS = ("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool")


def worker_kernels(events: list[dict]) -> list[dict]:
  """The kernel events on XLA's worker threads (not the executor's or the pool's own spans),
  each lasting from its launch to its `end: NAME` event where it has one.

  XLA:CPU runs its own dots and its parallel loop fusions asynchronously: their event spans only
  the launch (microseconds), their work runs as pool tasks after it, and an `end: NAME` event
  marks when the kernel finished. Counted at their launch spans, a ConvNeXt-T step's 41 weight-
  gradient dots came to 28 ms instead of about 2 s (experiments/cpu_speed/README.md, stop 41)."""
  names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  on_workers = sorted((e for e in events if e.get("ph") == "X"
                       and WORKER_THREAD in names.get((e["pid"], e["tid"]), "")
                       and not e["name"].startswith(NOT_KERNELS)), key=lambda e: e["ts"])
  kernels, running = [], {}
  for e in on_workers:
    if e["name"].startswith("end: "):
      launched = running.pop(e["name"][len("end: "):], None)
      if launched is not None:
        launched["dur"] = max(launched["dur"], e["ts"] + e["dur"] - launched["ts"])
    else:
      kernels.append(dict(e))
      running[e["name"]] = kernels[-1]
  return kernels


def concurrent_time(spans: list[tuple[float, float, int]]) -> float:
  """Time (same unit) during which two spans on different threads overlap, each overlap once."""
  total = 0.0
  for i, (start, end, thread) in enumerate(spans):
    for other_start, other_end, other_thread in spans[i + 1:]:
      if other_start >= end:
        break
      if other_thread != thread:
        total += max(0.0, min(end, other_end) - other_start)
  return total


def overlaps(kernels: list[dict]) -> collections.Counter:
  """{(kind, kind): time (us) during which exactly these two kernels ran at once}: where XLA
  ran independent kernels side by side on the two threads (they then share the cores)."""
  edges = sorted([(e["ts"], 1, kernel_kind(e["name"])) for e in kernels]
                 + [(e["ts"] + e["dur"], -1, kernel_kind(e["name"])) for e in kernels])
  running: collections.Counter[str] = collections.Counter()
  pairs: collections.Counter[tuple[str, str]] = collections.Counter()
  previous = edges[0][0] if edges else 0.0
  for ts, change, kind in edges:
    if sum(running.values()) == 2:
      pairs[tuple(sorted(running.elements()))] += ts - previous
    running[kind] += change
    previous = ts
  return pairs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--mode", choices=("train", "infer"), default="train")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--model_options", default="{}", help="JSON, as bench's")
  parser.add_argument("--conv_impl", default="auto", choices=layers.CONV_IMPLS,
                      help="as bench's")
  parser.add_argument("--steps", type=int, default=3, help="steps traced")
  parser.add_argument("--top", type=int, default=20, help="kinds listed")
  args = parser.parse_args()

  train.check_conv_impl(args.conv_impl)
  with layers.conv_impl(args.conv_impl):  # Read when the step is traced.
    prepared = bench.prepare_jax(args.model, mode=args.mode, batch_size=args.batch_size,
                                 image_size=args.image_size, num_classes=args.num_classes,
                                 num_devices=1, model_kwargs=json.loads(args.model_options))
  for _ in range(2):  # Warm: the first steps make oneDNN's primitives and XLA's buffers.
    jax.block_until_ready(prepared.run_step())
  with tempfile.TemporaryDirectory(prefix="kernel_profile_") as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        jax.block_until_ready(prepared.run_step())
    wall_ms = (time.perf_counter() - start) / args.steps * 1e3
    kernels = worker_kernels(trace_events(trace_dir))

  per_kind: collections.Counter[str] = collections.Counter()
  count: collections.Counter[str] = collections.Counter()
  for e in kernels:
    per_kind[kernel_kind(e["name"])] += e["dur"] / 1e3 / args.steps  # us -> ms per step
    count[kernel_kind(e["name"])] += 1
  total = sum(per_kind.values())
  print(f"{args.model} {args.mode}, batch {args.batch_size}, {args.image_size} px: "
        f"{wall_ms:.1f} ms a step under the profiler, {total:.1f} ms of kernels on XLA's threads")
  for kind, ms in per_kind.most_common(args.top):
    share, calls_a_step = 100 * ms / total, count[kind] // args.steps
    print(f"  {ms:9.2f} ms {share:5.1f} %  {calls_a_step:5d} a step  {kind}")
  pairs = overlaps(kernels)
  print(f"two kernels at once: {sum(pairs.values()) / 1e3 / args.steps:.1f} ms a step; most:")
  for (first, second), us in pairs.most_common(5):
    print(f"  {us / 1e3 / args.steps:9.2f} ms  {first} beside {second}")
  calls = sorted((e["ts"], e["ts"] + e["dur"], e["tid"]) for e in kernels
                 if kernel_kind(e["name"]) == "ffi_call")
  if calls:
    beside = concurrent_time(calls) / 1e3 / args.steps
    print(f"custom calls beside another custom call: {beside:.1f} ms a step of "
          f"{per_kind['ffi_call']:.1f}")


if __name__ == "__main__":
  main()
