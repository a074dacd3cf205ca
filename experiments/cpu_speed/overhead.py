"""The training loop's overhead: time per step of a real `python -m cnn_jax.main` run (data,
metrics, logging, checkpoints included) against the bare jitted step of the same config on
one of its batches (`python -m cnn_jax.bench --config`, the loop's own functions).

  python experiments/cpu_speed/overhead.py                    # make train's LeNet-5, ResNet-20
  python experiments/cpu_speed/overhead.py --config configs/lenet5_mnist.py --json

Per config: bench, main, bench again (machine load drifts; the bare step is the mean of the
two benches), each its own process with the tools' own process settings. The run's per-step
time is its `time/steps_s` record (cnn_jax/train.py: the steps after the first, eval and
compilation left out) over its steps; the bare step is bench's back-to-back steps on one fixed
batch (`feed.step_alone_s`), and bench's `--with_data` figures come along. Both in wall time
and in the process's CPU time (`*_cpu_s`), which is what holds on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = ("configs/lenet5_mnist.py", "configs/resnet_cifar_digits.py")


def _run(cmd: list[str]) -> tuple[str, float]:
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
  if proc.returncode != 0:
    raise SystemExit(f"error: {' '.join(cmd[1:])} failed ({proc.returncode}):\n"
                     + proc.stderr[-2000:])
  return proc.stdout, time.perf_counter() - start


def bare_step(config: str, overrides: list[str], steps: int) -> dict[str, Any]:
  out, _ = _run([sys.executable, "-m", "cnn_jax.bench", "--config", config, *overrides,
                 "--with_data", "--steps", str(steps), "--warmup", "3", "--json"])
  return json.loads(out.strip().splitlines()[-1])["jax"][0]["feed"]


def main_run(config: str, overrides: list[str], workdir: str) -> dict[str, Any]:
  out, wall = _run([sys.executable, "-m", "cnn_jax.main", "--config", config, *overrides,
                    "--workdir", workdir])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  times = next(r for r in reversed(records) if "time/steps_s" in r)
  steps = times["step"] - 1  # time/steps_s covers the steps after the first
  return {"wall_s": wall, "steps": steps, **{k[5:]: v for k, v in times.items()
                                             if k.startswith("time/")},
          "step_s": times["time/steps_s"] / steps,
          "step_cpu_s": times["time/steps_cpu_s"] / steps,
          "final": out.strip().splitlines()[-1]}


def measure(config: str, overrides: list[str], steps: int) -> dict[str, Any]:
  load_start = os.getloadavg()[0]
  before = bare_step(config, overrides, steps)
  with tempfile.TemporaryDirectory(prefix="overhead_") as workdir:
    run = main_run(config, overrides, workdir)
  after = bare_step(config, overrides, steps)
  bare = (before["step_alone_s"] + after["step_alone_s"]) / 2
  bare_cpu = (before["step_alone_cpu_s"] + after["step_alone_cpu_s"]) / 2
  return {"config": " ".join([config, *overrides]), "run": run, "bench": [before, after],
          "bare_step_s": bare, "overhead": run["step_s"] / bare - 1,
          "bare_step_cpu_s": bare_cpu, "overhead_cpu": run["step_cpu_s"] / bare_cpu - 1,
          "load_avg_1m": [load_start, os.getloadavg()[0]]}


def report_line(r: dict[str, Any]) -> str:
  run = r["run"]
  inside = sum(run.get(k, 0.0) for k in ("setup_s", "first_step_s", "steps_s", "eval_s",
                                        "checkpoint_wait_s"))
  benches = ", ".join(f"{b['step_alone_s'] * 1e3:.1f}" for b in r["bench"])
  with_data = ", ".join(f"{b['step_with_data_s'] * 1e3:.1f}" for b in r["bench"])
  return (f"{r['config']}: run {run['step_s'] * 1e3:.1f} ms/step vs bare step "
          f"{r['bare_step_s'] * 1e3:.1f} ms ({benches}; fed by the pipeline {with_data}): "
          f"overhead {100 * r['overhead']:+.1f} %; CPU time {run['step_cpu_s'] * 1e3:.1f} vs "
          f"{r['bare_step_cpu_s'] * 1e3:.1f} ms/step: {100 * r['overhead_cpu']:+.1f} %. "
          f"Run wall {run['wall_s']:.1f} s = setup {run['setup_s']:.1f} + compile/first step "
          f"{run['first_step_s']:.1f} + {run['steps']} steps {run['steps_s']:.1f} + eval "
          f"{run.get('eval_s', 0.0):.1f} + final checkpoint {run['checkpoint_wait_s']:.1f} + "
          f"process start/exit "
          f"{run['wall_s'] - inside:.1f} s; "
          f"load {r['load_avg_1m'][0]:.1f} -> {r['load_avg_1m'][1]:.1f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", action="append", help="configs/X.py[:arg] (repeatable; "
                      "default: " + ", ".join(CONFIGS) + ")")
  parser.add_argument("--override", action="append", default=[],
                      help="--config.a.b=v passed to both tools (repeatable)")
  parser.add_argument("--steps", type=int, default=30, help="bench steps per round")
  parser.add_argument("--json", action="store_true", help="one JSON object per config")
  args = parser.parse_args()
  for config in args.config or CONFIGS:
    result = measure(config, args.override, args.steps)
    print(json.dumps(result) if args.json else report_line(result), flush=True)


if __name__ == "__main__":
  main()
