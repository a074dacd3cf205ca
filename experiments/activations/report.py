"""Experiment 2 (issue 10): activations, saturation and gradient flow: the report.

  python -m cnn_jax.sweep --config configs/sweeps/activations_digits.py
  python experiments/activations/report.py [--sweep_config configs/sweeps/X.py[:ARG]]
                                           [--sweep_workdir DIR] [--targets 0.25,0.1]

Reads every point of the sweep (its metrics.jsonl and final_metrics.json) and writes, next to
this script (or to --out_dir):
  results.md / results.csv  model, activation, depth, final train and test error, the epoch at
                            which the smoothed training error first reaches each target (or
                            "not reached"), and the first-conv / last-conv gradient-norm ratio
  training_error.png        smoothed training-error curves, one panel per model
  gradient_norms.png/.json  per-layer ||dL/dW|| at init and at the end of training, computed by
                            experiments/gradient_flow/gradient_flow.py on one fixed batch

"Smoothed training error" at step s is the mean training error of the steps in the one-epoch
window (s - steps_per_epoch, s]: the per-epoch training error of AlexNet's Fig. 1, but read at
every logged step rather than only at epoch ends. It is defined once a full epoch has run, so
the earliest "epochs to target" is 1.0.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from cnn_jax import sweep  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SWEEP = "configs/sweeps/activations_digits.py"
COLOURS = {"sigmoid": "tab:orange", "tanh": "tab:green", "relu": "tab:blue", "gelu": "tab:purple"}


# ----------------------------------------------------------------------------- curves

def smoothed_error(curve: Sequence[tuple[int, float]], window: int) -> list[tuple[int, float]]:
  """[(step, mean training error over the steps in (step - window, step])] for each logged step
  with a full window behind it.

  `curve` is [(step, accuracy)] as logged: each value is the mean over the steps since the
  previous log, so it is weighted by that span (correct for any log_every_steps, including a
  last, shorter span). A logged span that straddles the window's start counts in part.
  """
  if window < 1:
    raise ValueError(f"window must be >= 1 step, got {window}")
  points = sorted(curve)
  spans = []  # (first step, last step, error) of each logged span
  previous = 0
  for step, accuracy in points:
    spans.append((previous + 1, step, 1.0 - accuracy))
    previous = step
  out = []
  for step, _ in points:
    if step < window:
      continue
    start = step - window + 1
    total = weight = 0.0
    for first, last, error in spans:
      overlap = min(last, step) - max(first, start) + 1
      if overlap > 0:
        total += overlap * error
        weight += overlap
    out.append((step, total / weight))
  return out


def epochs_to_target(curve: Sequence[tuple[int, float]], steps_per_epoch: int,
                     target: float) -> float | None:
  """First epoch (fractional: step / steps_per_epoch) at which the one-epoch smoothed training
  error is <= target; None when it never is."""
  for step, error in smoothed_error(curve, steps_per_epoch):
    if error <= target:
      return step / steps_per_epoch
  return None


def describe_point(point: sweep.Point) -> dict[str, Any]:
  """model, activation, kind (plain/residual), depth of a sweep point, and `setting`: the model
  with the point's other overrides (e.g. a learning rate), one panel of the plots."""
  model = point.config.model.name
  others = [f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in point.overrides.items() if k not in ("model.name", "model.activation")]
  digits = re.sub(r"\D", "", model)
  return {"model": model, "activation": point.config.model.get("activation", "relu"),
          "kind": "residual" if model.startswith("resnet") else "plain",
          "depth": int(digits) if digits else None,
          "setting": " ".join([model, *others]).strip()}


# ----------------------------------------------------------------------------- table

def steps_per_epoch_of(config) -> int:
  """The run's steps per epoch, as train.py computes it (builds the data pipeline)."""
  from cnn_jax import data

  train_batches, _, _ = data.create_datasets(config)
  return int(train_batches.steps_per_epoch)


def collect_rows(points: Sequence[sweep.Point], sweep_workdir: str, targets: Sequence[float],
                 steps_per_epoch: int) -> list[dict[str, Any]]:
  """One row per point; missing runs get status "not run" and empty numbers."""
  rows = []
  for point in points:
    workdir = os.path.join(sweep_workdir, point.name)
    curves = sweep.read_curves(workdir)
    final_path = os.path.join(workdir, sweep.FINAL_METRICS)
    final = json.load(open(final_path)) if os.path.exists(final_path) else {}
    train_curve = curves.get("train/accuracy", [])
    row = {**describe_point(point), "point": point.name,
           "status": "finished" if final else ("partial" if train_curve else "not run"),
           "steps": train_curve[-1][0] if train_curve else 0}
    smooth = smoothed_error(train_curve, steps_per_epoch) if train_curve else []
    row["train_error"] = smooth[-1][1] if smooth else None
    row["train_loss"] = curves["train/loss"][-1][1] if curves.get("train/loss") else None
    row["test_error"] = 1.0 - final["accuracy"] if "accuracy" in final else None
    for target in targets:
      row[f"epochs_to_{target:g}"] = (epochs_to_target(train_curve, steps_per_epoch, target)
                                      if train_curve else None)
    rows.append(row)
  return rows


def _cell(value: Any, percent: bool = False, unreached: str = "") -> str:
  if value is None:
    return unreached or "-"
  if isinstance(value, float):
    return f"{100 * value:.2f}" if percent else f"{value:.1f}"
  return str(value)


def write_table(rows: Sequence[dict[str, Any]], targets: Sequence[float], out_dir: str,
                title: str, steps_per_epoch: int, gradient_ratios: dict[str, dict[str, float]]
                ) -> str:
  """results.md (returned) and results.csv."""
  header = (["model", "activation", "depth", "train error % (last epoch)", "test error %"]
            + [f"epochs to {100 * t:g} % train error" for t in targets]
            + ["|g| first/penultimate layer, init", "|g| first/penultimate, end", "status"])
  lines = [f"# {title}", "",
           f"Training error: mean over the last epoch ({steps_per_epoch} steps) of the logged "
           "training batches; epochs to target: first epoch (fractional) at which that "
           "one-epoch moving average is at or below the target.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  order = {a: i for i, a in enumerate(COLOURS)}
  rows = sorted(rows, key=lambda r: (r["kind"] != "plain", r["depth"] or 0, r["setting"],
                                     order.get(r["activation"], 9)))
  for row in rows:
    ratios = gradient_ratios.get(row["point"], {})
    stopped = row["status"] == "not run"
    cells = [row["setting"], row["activation"], str(row["depth"]),
             _cell(row["train_error"], percent=True), _cell(row["test_error"], percent=True)]
    cells += [_cell(row[f"epochs_to_{t:g}"], unreached="-" if stopped else "not reached")
              for t in targets]
    cells += [_fmt_ratio(ratios.get("init")), _fmt_ratio(ratios.get("end")), row["status"]]
    lines.append("| " + " | ".join(cells) + " |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(text)
  fields = ["setting", "model", "kind", "activation", "depth", "status", "steps", "train_error",
            "train_loss", "test_error", *[f"epochs_to_{t:g}" for t in targets],
            "grad_ratio_init", "grad_ratio_end"]
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      ratios = gradient_ratios.get(row["point"], {})
      writer.writerow({**row, "grad_ratio_init": ratios.get("init"),
                       "grad_ratio_end": ratios.get("end")})
  return text


def _fmt_ratio(value: float | None) -> str:
  return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


# ----------------------------------------------------------------------------- gradients

def gradient_norms(points: Sequence[sweep.Point], sweep_workdir: str
                   ) -> dict[str, dict[str, list[tuple[str, float, float]]]]:
  """{point: {"init": rows, "step N": rows}} for every finished point, all on one batch."""
  sys.path.insert(0, os.path.join(REPO_ROOT, "experiments", "gradient_flow"))
  import gradient_flow  # experiments/gradient_flow/gradient_flow.py: the same computation

  results, batch = {}, None
  for point in points:
    workdir = os.path.join(sweep_workdir, point.name)
    if not os.path.exists(os.path.join(workdir, sweep.FINAL_METRICS)):
      continue
    results[point.name], batch = gradient_flow.run_gradient_norms(workdir, batch)
    print(f"gradients: {point.name}", flush=True)
  return results


def first_last_ratios(by_when: dict[str, list]) -> dict[str, float]:
  """||dL/dW|| of the first layer over the penultimate one (the last conv of a CIFAR net, the
  layer before the classifier), at init and at the end: > 1 means the gradient grows towards
  the input, < 1 that it vanishes on its way down."""
  out = {}
  for when, rows in by_when.items():
    norms = [g for _, g, _ in rows]
    out["init" if when == "init" else "end"] = norms[0] / norms[-2] if norms[-2] else math.inf
  return out


# ----------------------------------------------------------------------------- plots

def plot_training_error(points: Sequence[sweep.Point], rows: Sequence[dict[str, Any]],
                        sweep_workdir: str, steps_per_epoch: int, targets: Sequence[float],
                        path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = list(dict.fromkeys(r["setting"] for r in rows))
  fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), sharey=True)
  axes = list(getattr(axes, "flat", [axes]))
  for point, row in zip(points, rows):
    curve = sweep.read_curves(os.path.join(sweep_workdir, point.name)).get("train/accuracy")
    if not curve:
      continue
    smooth = smoothed_error(curve, steps_per_epoch)
    ax = axes[models.index(row["setting"])]
    ax.plot([s / steps_per_epoch for s, _ in smooth], [max(e, 1e-3) for _, e in smooth],
            color=COLOURS.get(row["activation"], "k"), label=row["activation"])
  for ax, model in zip(axes, models):
    for target in targets:
      ax.axhline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_title(model)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("training error (one-epoch moving average)")
  _legend(fig, axes)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _legend(fig, axes) -> None:
  """One legend for the figure, one entry per activation (a panel may lack some)."""
  handles = {}
  for ax in axes:
    for line in ax.get_lines():
      handles.setdefault(line.get_label(), line)
  labels = [a for a in COLOURS if a in handles] + [a for a in handles if a not in COLOURS
                                                   and not a.startswith("_")]
  fig.legend([handles[a] for a in labels], labels, loc="lower center", ncol=len(labels),
             fontsize=9)


def plot_gradient_norms(results: dict[str, dict[str, list]], rows: Sequence[dict[str, Any]],
                        path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  by_point = {r["point"]: r for r in rows}
  models = list(dict.fromkeys(r["setting"] for r in rows if r["point"] in results))
  fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 7.0), sharey=True,
                           squeeze=False)
  for name, by_when in results.items():
    row = by_point[name]
    column = models.index(row["setting"])
    for i, (when, layers) in enumerate(by_when.items()):
      norms = [g for _, g, _ in layers]
      ax = axes[i, column]
      ax.plot(range(1, len(norms) + 1), norms, color=COLOURS.get(row["activation"], "k"),
              marker=".", markersize=3, label=row["activation"])
      ax.set_title(f"{row['setting']}, {when}", fontsize=10)
  for ax in axes.flat:
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
  for ax in axes[-1]:
    ax.set_xlabel("layer (kernels, input -> classifier)")
  for ax in axes[:, 0]:
    ax.set_ylabel("||dL/dW|| (same batch)")
  _legend(fig, axes.flat)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep_config", default=DEFAULT_SWEEP,
                      help="a sweep config, PATH or PATH:ARG as cnn_jax.sweep takes it")
  parser.add_argument("--sweep_workdir", default=None, help="default: the sweep config's")
  parser.add_argument("--out_dir", default=HERE)
  parser.add_argument("--targets", default="0.25,0.1",
                      help="training-error targets, fractions (AlexNet's is 0.25)")
  parser.add_argument("--no_gradients", action="store_true",
                      help="skip the per-layer gradient norms (tables and curves only)")
  parser.add_argument("--gradients_from", default=None,
                      help="a gradient_norms.json this script wrote: replot it, compute nothing")
  args = parser.parse_args(argv)

  path, _, arg = args.sweep_config.partition(":")
  config = sweep.load_config_file(path, arg)
  sweep_workdir = args.sweep_workdir or config.workdir
  points = sweep.build_points(config)
  targets = [float(t) for t in args.targets.split(",") if t]
  steps_per_epoch = steps_per_epoch_of(points[0].config)
  os.makedirs(args.out_dir, exist_ok=True)

  rows = collect_rows(points, sweep_workdir, targets, steps_per_epoch)
  ratios: dict[str, dict[str, float]] = {}
  if args.gradients_from:
    with open(args.gradients_from) as f:
      results = json.load(f)
  elif not args.no_gradients:
    results = gradient_norms(points, sweep_workdir)
    with open(os.path.join(args.out_dir, "gradient_norms.json"), "w") as f:
      json.dump(results, f, indent=1)
  if args.gradients_from or not args.no_gradients:
    ratios = {name: first_last_ratios(by_when) for name, by_when in results.items()}
    if results:
      plot_gradient_norms(results, rows, os.path.join(args.out_dir, "gradient_norms.png"))
  print(write_table(rows, targets, args.out_dir, config.name, steps_per_epoch, ratios))
  plot_training_error(points, rows, sweep_workdir, steps_per_epoch, targets,
                      os.path.join(args.out_dir, "training_error.png"), config.name)
  print(f"wrote {args.out_dir}/results.md, results.csv, training_error.png"
        + ("" if args.no_gradients else ", gradient_norms.png, gradient_norms.json"))


if __name__ == "__main__":
  main()
