"""How long each framework's steps take to come back to speed after a pause: the step time by
position in a turn, as `bench --vs_torch` runs turns (cnn_jax/bench_torch.py `paired_times`).

  python experiments/cpu_speed/turn_profile.py                       # LeNet-5, 32 px, batch 128
  python experiments/cpu_speed/turn_profile.py --model resnet20 --in_channels 3 --steps 5 \\
      --torch_python /path/to/venv_with_torch/bin/python --pause 0.2 0.02

For each pause, ROUNDS turns of STEPS back-to-back steps, each turn after that long a sleep;
prints the median step time at each position of the turn, cnn_jax and (with --torch_python)
PyTorch. Where the first positions are slower than the last, the turns of `--vs_torch` must
leave them out (`_TURN_WARM_S`); a training loop never pauses between steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import hostenv  # noqa: E402


def profile(run_steps: Callable[[int], list[float]], pause: float, steps: int,
            rounds: int) -> list[float]:
  """Median step time (s) at each position of `rounds` turns of `steps`, each after `pause`."""
  by_position = [[] for _ in range(steps)]
  for _ in range(rounds):
    time.sleep(pause)
    for position, t in enumerate(run_steps(steps)):
      by_position[position].append(t)
  return [statistics.median(times) for times in by_position]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="lenet5")
  parser.add_argument("--mode", default="train", choices=("train", "infer"))
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--in_channels", type=int, default=1)
  parser.add_argument("--num_classes", type=int, default=10)
  parser.add_argument("--steps", type=int, default=8, help="steps per turn")
  parser.add_argument("--rounds", type=int, default=15, help="turns per pause")
  parser.add_argument("--pause", type=float, nargs="+", default=[0.2, 0.02])
  parser.add_argument("--torch_python", help="a Python with torch: profile PyTorch too")
  args = parser.parse_args(argv)

  hostenv.set_xla_flags()
  hostenv.cheap_tracer_sharding_probe()
  from cnn_jax import bench, bench_torch

  sides = {"cnn_jax": bench.prepare_jax(
      args.model, mode=args.mode, batch_size=args.batch_size, image_size=args.image_size,
      num_classes=args.num_classes, model_kwargs={"in_channels": args.in_channels}).time_steps}
  worker = None
  if args.torch_python:
    worker = bench_torch.TorchWorker(
        bench_torch.check_torch(args.torch_python), args.model, batch_size=args.batch_size,
        image_size=args.image_size, in_channels=args.in_channels,
        num_classes=args.num_classes, dtype="float32")
    sides["PyTorch"] = lambda count: worker.run_steps(args.mode, count)
  try:
    for run_steps in sides.values():
      run_steps(3)  # Compiled, allocated, warm.
    print(f"{args.model} {args.mode}, batch {args.batch_size}, {args.image_size} px: median ms "
          f"by position in a turn of {args.steps} steps ({args.rounds} turns)")
    for pause in args.pause:
      for name, run_steps in sides.items():
        medians = profile(run_steps, pause, args.steps, args.rounds)
        print(f"  {name:8s} after {pause:5.3f} s: "
              + " ".join(f"{1e3 * t:6.1f}" for t in medians))
  finally:
    if worker is not None:
      worker.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
