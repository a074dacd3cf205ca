"""Which part of the training loop costs what, in one process: a config's train step (built by
the loop's own functions) timed in alternating rounds of back-to-back steps, each round one of

  fixed    the step on one batch already on the device (bench's bare step);
  fed      the step on the input pipeline's batches, handed over by `parallel.feed_batch`
           (on a CPU, host arrays the step takes without a copy) and fetched ahead by
           `data.prefetch_to_device`, as the loop does;
  put      the same, each batch put on the devices by `parallel.shard_batch` instead (the
           loop's feed on a CPU before stop 42, and its feed on an accelerator);
  loop     `fed` plus the loop's per-step bookkeeping: the step's metrics kept in a window and
           read at `log_every_steps` (`metrics.window_means`), the checkpoint manager asked
           whether a save is due (`Checkpointer.is_due`, no save made).

  python experiments/cpu_speed/loop_parts.py                      # make train's LeNet-5
  python experiments/cpu_speed/loop_parts.py --config configs/resnet_cifar_digits.py \\
      --steps 20 --rounds 4

What a real `main` run adds beyond `loop` (evals, the checkpoint saves, logging, the first
steps after compilation) is `overhead.py`'s run against its bare step. Wall and process CPU
time per step (all threads), median and minimum over the rounds; the rounds alternate in
order and reverse order, so slow drift of the machine falls on every part alike. Run it with
`GLIBC_TUNABLES` holding `hostenv.MALLOC_TUNABLES` (as `make test` sets it), as `main` and
`bench` run themselves; the script then runs the step inline as they do.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import hostenv  # noqa: E402

hostenv.configure_jax()  # As a tool's process: XLA:CPU flags, compilation cache.

import jax  # noqa: E402  (after the XLA flags)

from cnn_jax import bench, checkpoint, cli, metrics, parallel  # noqa: E402

PARTS = ("fixed", "fed", "put", "loop")


def build_parts(config: Any, workdir: str) -> dict[str, Callable[[int], Any]]:
  """Each part as `run(steps)`, on `bench`'s build of the config's step (the loop's functions,
  the state carried from one call to the next)."""
  feed = bench.prepare_jax(config.model.name, config=config, with_data=True).feed
  ckpt = checkpoint.Checkpointer(workdir, config)
  unit = {"fixed": feed.step_alone, "fed": feed.step_with_data,
          "put": feed.step_fed_by(parallel.shard_batch), "loop": feed.step_with_data}
  done = {"steps": 0}

  def run(part: str, steps: int) -> Any:
    window = []
    for _ in range(steps):
      step_metrics = unit[part]()
      done["steps"] += 1
      if part == "loop":
        window.append(step_metrics)
        if done["steps"] % config.log_every_steps == 0:
          metrics.window_means(window)
          window = []
        ckpt.is_due(done["steps"])
    return jax.block_until_ready(step_metrics)  # The step's outputs: ready when it has run.

  return {part: functools.partial(run, part) for part in PARTS}


def measure(runs: dict[str, Callable[[int], Any]], steps: int, rounds: int
            ) -> dict[str, dict[str, float]]:
  for run in runs.values():  # Compiles, and warms the pipeline and the step's buffers.
    run(max(steps // 10, 2))
  wall: dict[str, list[float]] = {part: [] for part in runs}
  cpu: dict[str, list[float]] = {part: [] for part in runs}
  order = list(runs)
  for round_ in range(rounds):
    for part in (order if round_ % 2 == 0 else order[::-1]):
      start, start_cpu = time.perf_counter(), time.process_time()
      runs[part](steps)
      wall[part].append((time.perf_counter() - start) / steps)
      cpu[part].append((time.process_time() - start_cpu) / steps)
  return {part: {"wall_median_s": statistics.median(wall[part]), "wall_min_s": min(wall[part]),
                 "cpu_median_s": statistics.median(cpu[part]), "wall_s": wall[part],
                 "cpu_s": cpu[part]} for part in runs}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/lenet5_mnist.py", help="configs/X.py[:arg]")
  parser.add_argument("--steps", type=int, default=310, help="steps per round")
  parser.add_argument("--rounds", type=int, default=8, help="rounds per part")
  parser.add_argument("--json", action="store_true", help="one JSON object")
  args = parser.parse_args()
  path, _, arg = args.config.partition(":")
  config = cli.load_config_file(path, arg)
  with tempfile.TemporaryDirectory(prefix="loop_parts_") as workdir:
    result = measure(build_parts(config, workdir), args.steps, args.rounds)
  if args.json:
    print(json.dumps({"config": args.config, "steps": args.steps, "rounds": args.rounds,
                      "load_avg_1m": os.getloadavg()[0], "parts": result}))
    return
  fixed = result["fixed"]["wall_median_s"]
  for part, r in result.items():
    print(f"{args.config} {part:6s} {r['wall_median_s'] * 1e3:8.2f} ms/step (min "
          f"{r['wall_min_s'] * 1e3:.2f}; {100 * (r['wall_median_s'] / fixed - 1):+5.1f} % on "
          f"fixed), CPU {r['cpu_median_s'] * 1e3:.2f} ms/step")


if __name__ == "__main__":
  main()
