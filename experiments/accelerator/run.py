"""The one-command accelerator check: train-step throughput, MFU, compile time and peak memory
of the models this project is about, and a 300-step training run through the real input
pipeline, in one JSON and one Markdown table.

  python experiments/accelerator/run.py --out runs/accelerator        # on a GPU/TPU host
  python experiments/accelerator/run.py --out runs/accelerator --vs_torch   # + PyTorch pairs
  python experiments/accelerator/run.py --dry_run --out /tmp/acc      # tiny stand-ins, CPU

Without --dry_run it first checks that JAX sees a GPU or TPU (JAX's plugin for the chip
installed: `make venv-cuda`) and stops with an error if not.
Every row is its own process (`python -m cnn_jax.bench --json`, `python -m cnn_jax.main`), so
one model's failure or memory does not touch the next; a failed row is reported, not fatal.
One H200 took 5.3 minutes (stop 35), most of it compilation; --vs_torch adds ~100 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN_CONFIG = os.path.join("experiments", "accelerator", "resnet50_synthetic.py")
# What the README compares against (../shared/REFERENCE.md's speed anchors).
ANCHORS = ("NVIDIA DeepLearningExamples ResNet-50 training, 1x A100-80GB AMP: 2,470 img/s; "
           "timm ConvNeXt-T training on RTX 3090 AMP: 813 img/s, ResNet-50 826 img/s")


@dataclasses.dataclass(frozen=True)
class BenchRow:
  label: str
  model: str
  mode: str
  batch_size: int
  image_size: int
  pairs_with_torch: bool = True  # --vs_torch: PyTorch has this model under this name.
  model_options: str = ""  # bench's --model_options (JSON), when not the model's defaults.


FULL_ROWS = (
    BenchRow("ResNet-50 train", "resnet50", "train", 256, 224),
    BenchRow("ConvNeXt-T train", "convnext_tiny", "train", 256, 224),
    BenchRow("ViT-S/16 train", "vit_small_patch16_224", "train", 256, 224),
    # PyTorch's ViT runs its fused attention; this row gives cnn_jax's cuDNN's (models/vit.py).
    BenchRow("ViT-S/16 train, cuDNN attention", "vit_small_patch16_224", "train", 256, 224,
             model_options='{"attention_impl": "cudnn"}'),
    BenchRow("ConvNeXt V2-B FCMAE", "convnextv2_base", "fcmae", 256, 224),
    BenchRow("ResNet-50 inference", "resnet50", "infer", 256, 224),
)
# Same kinds of step, models small enough to compile and run in seconds on a CPU.
DRY_ROWS = (
    BenchRow("ResNet-20 train (dry)", "resnet20", "train", 8, 32),
    BenchRow("ConvNeXt V2-A train (dry)", "convnextv2_atto", "train", 8, 32),
    BenchRow("ViT-Ti/4 train (dry)", "vit_tiny_patch4_32", "train", 8, 32,
             pairs_with_torch=False),
    BenchRow("ConvNeXt V2-A FCMAE (dry)", "convnextv2_atto", "fcmae", 8, 64),
)


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None
         ) -> tuple[int, str, str, float]:
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)
    code, out, err = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    code, out, err = 124, e.stdout or "", f"timed out after {timeout:.0f} s"
    out = out.decode() if isinstance(out, bytes) else out
  return code, out, err, time.perf_counter() - start


def _last_line(text: str) -> str:
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else ""


def bench_command(row: BenchRow, *, dtype: str, steps: int, warmup: int) -> list[str]:
  cmd = [sys.executable, "-m", "cnn_jax.bench", "--model", row.model, "--mode", row.mode,
         "--batch_size", str(row.batch_size), "--image_size", str(row.image_size),
         "--dtype", dtype, "--steps", str(steps), "--warmup", str(warmup), "--json"]
  return cmd + (["--model_options", row.model_options] if row.model_options else [])


def bench_row(row: BenchRow, *, dtype: str, steps: int, warmup: int, timeout: float,
              torch_python: str | None = None) -> dict[str, Any]:
  """One `cnn_jax.bench` process; with `torch_python`, a train row is also timed in PyTorch
  eager on the same device, in turns (`bench --vs_torch`), train and inference."""
  cmd = bench_command(row, dtype=dtype, steps=steps, warmup=warmup)
  env = None
  if torch_python and row.mode == "train" and row.pairs_with_torch:
    cmd += ["--vs_torch", "--torch_python", torch_python]
    # JAX takes 75 % of a GPU's memory when its backend starts: leave PyTorch's process room.
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".45", **os.environ}
  code, out, err, wall = _run(cmd, timeout, env)
  entry: dict[str, Any] = {"label": row.label, "kind": "bench", "command": " ".join(cmd[1:]),
                           "wall_s": wall, "ok": code == 0}
  if code != 0:
    entry["error"] = _last_line(err) or f"exit {code}"
    entry["stderr_tail"] = err[-4000:]  # The traceback, for the JSON reader.
    return entry
  entry.update(bench_figures(json.loads(_last_line(out)), row.mode))
  return entry


def bench_figures(report: dict[str, Any], mode: str) -> dict[str, Any]:
  """A row's figures from `cnn_jax.bench --json`'s report, with PyTorch's beside them when
  the report holds a `--vs_torch` pairing."""
  results = {result["mode"]: result for result in report["jax"]}
  result = results[mode]
  figures = {k: result.get(k) for k in (
      "model", "mode", "batch_size", "image_size", "dtype", "images_per_sec", "mfu",
      "peak_flops", "peak_flops_source", "model_flops_per_step", "compile_time_s",
      "lower_time_s", "peak_device_bytes", "peak_device_source", "device_kind",
      "num_devices", "platform", "jax_version")}
  figures["step_time_median_s"] = result["step_time_s"]["median"]
  if report.get("torch"):
    torch_train = report["torch"]["train"]
    figures["torch"] = {
        "source": torch_train["source"], "torch_version": torch_train["torch_version"],
        **{f"{m}_images_per_sec": report["torch"][m]["images_per_sec"] for m in report["torch"]},
        **{f"{m}_ratio": report["ratio_vs_torch"][m] for m in report["ratio_vs_torch"]},
        "infer_jax_images_per_sec": results["infer"]["images_per_sec"]}
  return figures


def main_run(*, dry: bool, workdir: str, timeout: float) -> dict[str, Any]:
  """A real `cnn_jax.main` run: data pipeline, metrics and checkpoint included."""
  config = MAIN_CONFIG + (":dry" if dry else "")
  cmd = [sys.executable, "-m", "cnn_jax.main", "--config", config, "--workdir", workdir]
  code, out, err, wall = _run(cmd, timeout)
  entry: dict[str, Any] = {"label": "ResNet-50 main run, synthetic data" + (" (dry)" if dry
                                                                            else ""),
                           "kind": "main", "command": " ".join(cmd[1:]), "wall_s": wall,
                           "ok": code == 0}
  if code != 0:
    entry["error"] = _last_line(err) or f"exit {code}"
    entry["stderr_tail"] = err[-4000:]  # The traceback, for the JSON reader.
    return entry
  rates = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "train/images_per_sec" in record:
        rates.append((record["step"], record["train/images_per_sec"]))
  # The first logging window holds the compilation; the rest is the steady rate.
  steady = [rate for _, rate in rates[1:]] or [rate for _, rate in rates]
  entry["images_per_sec"] = sorted(steady)[len(steady) // 2] if steady else None
  entry["steps"] = rates[-1][0] if rates else 0
  return entry


def _fmt(value: Any, spec: str, scale: float = 1.0, suffix: str = "") -> str:
  return "n/a" if value is None else f"{value * scale:{spec}}{suffix}"


def _vs_torch(entry: dict[str, Any]) -> str:
  torch = entry.get("torch")
  if not torch:
    return ""
  return f"{torch['train_ratio']:.2f}x / {torch['infer_ratio']:.2f}x"


def markdown(results: dict[str, Any]) -> str:
  host = results["host"]
  lines = [f"Accelerator check on {host['device']} ({host['num_devices']} device(s)), "
           f"jax {host['jax_version']}, {host['date']}" + (" — DRY RUN (CPU stand-ins)"
                                                          if results["dry_run"] else ""),
           "",
           "| what | batch | px | dtype | images/s | step | MFU | compile | peak memory "
           "| vs PyTorch, train / infer |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for e in results["rows"]:
    if not e["ok"]:
      lines.append(f"| {e['label']} | | | | failed: {e['error']} | | | | | |")
      continue
    if e["kind"] == "main":
      lines.append(f"| {e['label']} ({e['steps']} steps) | | | | "
                   f"{_fmt(e['images_per_sec'], '.0f')} | | | | | |")
      continue
    lines.append(
        f"| {e['label']} | {e['batch_size']} | {e['image_size']} | {e['dtype']} | "
        f"{_fmt(e['images_per_sec'], '.0f')} | {_fmt(e['step_time_median_s'], '.1f', 1e3, ' ms')} "
        f"| {_fmt(e['mfu'], '.1f', 100, ' %')} | {_fmt(e['compile_time_s'], '.0f', 1, ' s')} | "
        f"{_fmt(e['peak_device_bytes'], '.1f', 2**-30, ' GiB')} | {_vs_torch(e)} |")
  torch = next((e["torch"] for e in results["rows"] if e.get("torch")), None)
  if torch:
    lines += ["", f"vs PyTorch: PyTorch's step time over cnn_jax's, paired in turns in one "
              f"`bench --vs_torch` process per row ({torch['source']}, eager, autocast to the "
              "dtype, channels-last on a GPU)."]
  lines += ["", "MFU: model FLOPs per second (cnn_jax.bench: forward MACs x 2, x 3 for a "
            "train or FCMAE step) over the data-sheet dense peak of the chip for the dtype.",
            f"Anchors: {ANCHORS}."]
  return "\n".join(lines)


def _row_device_facts(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
  """The devices, as the first bench row that ran reports them, or None before one has."""
  for row in rows:
    if row["ok"] and row["kind"] == "bench":
      return {"device": row["device_kind"], "platform": row["platform"],
              "num_devices": row["num_devices"], "jax_version": row["jax_version"]}
  return None


def _device_facts(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """The devices, as a bench row that ran reports them; JAX in this process only when none
  ran: its import and backend start cost seconds, and on a GPU a backend started here before
  the rows would hold most of the device's memory while they run (JAX preallocates 75 %)."""
  facts = _row_device_facts(rows)
  if facts is not None:
    return facts
  import jax
  devices = jax.devices()
  return {"device": devices[0].device_kind, "platform": devices[0].platform,
          "num_devices": len(devices), "jax_version": jax.__version__}


def write_results(results: dict[str, Any], out: str) -> str:
  """Writes results.json and results.md into `out`; returns the table."""
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  table = markdown(results)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(table + "\n")
  return table


def record_row(results: dict[str, Any], entry: dict[str, Any], out: str) -> None:
  """Adds one row's entry to `results`, prints its line and rewrites the files in `out`."""
  results["rows"].append(entry)
  print(f"{entry['label']}: " + (f"{entry['images_per_sec'] or 0:.1f} img/s" if entry["ok"]
                                 else f"failed: {entry['error']}"), flush=True)
  results["host"].update(_row_device_facts(results["rows"]) or {})
  write_results(results, out)


def _backend() -> str:
  """The platform JAX starts on this host ("gpu", "tpu", "cpu"), asked in a process of its own
  (see `_device_facts`), without taking the device's memory."""
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  if probe.returncode != 0:
    return "none (" + (probe.stderr.strip().splitlines() or ["no output"])[-1] + ")"
  return probe.stdout.strip().splitlines()[-1]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="Directory for results.json/results.md "
                      "and the main run's workdir.")
  parser.add_argument("--dry_run", action="store_true", help="Tiny stand-in models on any "
                      "device (checks the wiring; figures mean nothing).")
  parser.add_argument("--dtype", default=None, help="Compute dtype (default bfloat16; "
                      "float32 with --dry_run).")
  parser.add_argument("--steps", type=int, default=None, help="Timed steps per row.")
  parser.add_argument("--timeout", type=float, default=240.0, help="Seconds per row.")
  parser.add_argument("--vs_torch", action="store_true", help="Also time each train row's "
                      "model in PyTorch eager (timm) on the same device, paired in turns "
                      "(`bench --vs_torch`): a ratio column, train and inference.")
  parser.add_argument("--torch_python", default=sys.executable, help="With --vs_torch: a "
                      "Python with torch and timm (default: this one).")
  parser.add_argument("--models", default="", help="Comma-separated model names: only the "
                      "bench rows of these (default: all).")
  args = parser.parse_args()
  dry = args.dry_run
  rows = DRY_ROWS if dry else FULL_ROWS
  if args.models:
    wanted = set(args.models.split(","))
    rows = tuple(row for row in rows if row.model in wanted)
    if not rows:
      parser.error(f"--models {args.models}: no row has these models")
  if not dry:
    backend = _backend()
    if backend not in ("gpu", "cuda", "rocm", "tpu"):
      parser.error(f"JAX's backend here is {backend}, not a GPU or TPU: install JAX's plugin for "
                   "the chip into the venv (`make venv-cuda` on an NVIDIA GPU host; README.md), "
                   "or pass --dry_run for the CPU wiring check")
  if args.vs_torch:
    try:
      failed = subprocess.run([args.torch_python, "-c", "import torch, timm"],
                              capture_output=True).returncode
    except OSError:  # No such program.
      failed = True
    if failed:
      parser.error(f"--vs_torch needs torch and timm in {args.torch_python} "
                   "(--torch_python=A_PYTHON_WITH_THEM)")
  dtype = args.dtype or ("float32" if dry else "bfloat16")
  steps = args.steps or (2 if dry else 20)
  os.makedirs(args.out, exist_ok=True)
  workdir = os.path.join(args.out, "main_run")
  if os.path.isdir(workdir):
    import shutil
    shutil.rmtree(workdir)  # A rerun measures afresh, never resumes a finished run.

  # Written again after every row: a row that hangs the host, or a lease that ends, leaves
  # the rows before it on disk ("complete": false until the last).
  results: dict[str, Any] = {"dry_run": dry, "complete": False, "rows": [], "host": {
      "machine": platform.machine(), "host_cpus": os.cpu_count(),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "device": "?", "num_devices": "?", "jax_version": "?"}}

  for row in rows:
    record_row(results, bench_row(row, dtype=dtype, steps=steps, warmup=1 if dry else 3,
                                  timeout=args.timeout,
                                  torch_python=args.torch_python if args.vs_torch else None),
               args.out)
  record_row(results, main_run(dry=dry, workdir=workdir, timeout=max(args.timeout, 300.0)),
             args.out)
  results["host"].update(_device_facts(results["rows"]))
  results["complete"] = True
  print(write_results(results, args.out))
  return 0 if all(e["ok"] for e in results["rows"]) else 1


if __name__ == "__main__":
  sys.exit(main())
