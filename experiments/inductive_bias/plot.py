"""Accuracy against training-set size from the inductive-bias sweep's results.csv.

  python experiments/inductive_bias/plot.py [SWEEP_WORKDIR [LONG_RUNS_DIR]]
      (defaults runs/sweeps/inductive_bias_digits, runs/ib_long)

Copies the sweep's results.md, results.csv and curves.png next to this file and writes
accuracy_vs_data.png (test accuracy and train-test gap against the number of training images,
log x) and by_size.md (one row per model, one column per training-set size). Runs in
LONG_RUNS_DIR named vit60x6_f<fraction>_1200steps (the ViT with 3x the steps, README) are drawn
as open markers.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_IMAGES = 4000  # the MNIST subset's train split
LABELS = {"resnet20": "ResNet-20 (CNN)", "vit60x6": "ViT 60x6, patch 4"}


def _float(text: str) -> float | None:
  return float(text) if text not in ("", "None") else None


def read_rows(sweep_dir: str) -> dict[str, dict[float, dict]]:
  """{model: {train fraction: row}} for the finished points."""
  by_model: dict[str, dict[float, dict]] = {}
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    for row in csv.DictReader(f):
      if row["status"] != "finished":
        continue
      model = row["base_config_arg"].split(",")[0]
      by_model.setdefault(model, {})[float(row["data.train_fraction"])] = {
          "test_acc": 1.0 - float(row["test_error"]),
          "train_acc": 1.0 - _float(row["train_error"]),
          "test_loss": float(row["test_loss"]), "train_loss": _float(row["train_loss"]),
          "wall_s": _float(row["wall_s"]), "params": row.get("params")}
  return by_model


def write_table(by_model: dict[str, dict[float, dict]]) -> str:
  fractions = sorted({f for per in by_model.values() for f in per})
  head = [f"{round(f * TRAIN_IMAGES):,} ({100 * f:g} %)" for f in fractions]
  lines = ["| test accuracy % | " + " | ".join(head) + " |", "|---|" + "---|" * len(fractions)]
  for model, per in by_model.items():
    cells = [f"{100 * per[f]['test_acc']:.1f}" if f in per else "-" for f in fractions]
    lines.append(f"| {LABELS.get(model, model)} | " + " | ".join(cells) + " |")
  if {"resnet20", "vit60x6"} <= set(by_model):
    cnn, vit = by_model["resnet20"], by_model["vit60x6"]
    cells = [f"{100 * (cnn[f]['test_acc'] - vit[f]['test_acc']):+.1f}"
             if f in cnn and f in vit else "-" for f in fractions]
    lines.append("| CNN - ViT (points) | " + " | ".join(cells) + " |")
  lines += ["", "| train accuracy % (last 10 steps, augmented) | " + " | ".join(head) + " |",
            "|---|" + "---|" * len(fractions)]
  for model, per in by_model.items():
    cells = [f"{100 * per[f]['train_acc']:.1f}" if f in per else "-" for f in fractions]
    lines.append(f"| {LABELS.get(model, model)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def read_long_runs(long_dir: str) -> dict[float, float]:
  """{train fraction: test accuracy} of the finished 1,200-step ViT runs."""
  out = {}
  if not os.path.isdir(long_dir):
    return out
  for name in sorted(os.listdir(long_dir)):
    match = re.fullmatch(r"vit60x6_f([0-9.]+)_1200steps", name)
    final = os.path.join(long_dir, name, "final_metrics.json")
    if match and os.path.exists(final):
      with open(final) as f:
        out[float(match.group(1))] = json.load(f)["accuracy"]
  return out


def plot(by_model: dict[str, dict[float, dict]], long_runs: dict[float, float],
         path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_acc, ax_gap) = plt.subplots(1, 2, figsize=(10, 4))
  for model, per in by_model.items():
    fractions = sorted(per)
    sizes = [round(f * TRAIN_IMAGES) for f in fractions]
    label = LABELS.get(model, model)
    ax_acc.plot(sizes, [100 * per[f]["test_acc"] for f in fractions], "o-", label=label)
    ax_gap.plot(sizes, [100 * (per[f]["train_acc"] - per[f]["test_acc"]) for f in fractions],
                "o-", label=label)
  if long_runs:
    fractions = sorted(long_runs)
    ax_acc.plot([round(f * TRAIN_IMAGES) for f in fractions],
                [100 * long_runs[f] for f in fractions], "s--", mfc="none", color="C1",
                label="ViT, 1,200 steps")
  for ax, title in ((ax_acc, "test accuracy % (1,000 test digits)"),
                    (ax_gap, "train - test accuracy (points)")):
    ax.set_xscale("log")
    sizes = sorted({round(f * TRAIN_IMAGES) for per in by_model.values() for f in per})
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{s:,}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images (same steps of batch 64 for every size)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  sweep_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/sweeps/inductive_bias_digits"
  for name in ("results.md", "results.csv", "curves.png"):
    if os.path.exists(os.path.join(sweep_dir, name)):
      shutil.copy(os.path.join(sweep_dir, name), os.path.join(HERE, name))
  by_model = read_rows(sweep_dir)
  table = write_table(by_model)
  with open(os.path.join(HERE, "by_size.md"), "w") as f:
    f.write(table)
  print(table)
  long_runs = read_long_runs(sys.argv[2] if len(sys.argv) > 2 else "runs/ib_long")
  plot(by_model, long_runs, os.path.join(HERE, "accuracy_vs_data.png"))


if __name__ == "__main__":
  main()
