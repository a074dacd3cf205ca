"""Accuracy against training-set size from the inductive-bias sweeps' results.csv.

  python experiments/inductive_bias/plot.py [SWEEP_WORKDIR ...]
      (default runs/sweeps/inductive_bias_digits runs/sweeps/inductive_bias_digits_1200)

For each sweep (one step budget each) copies its results.md, results.csv and curves.png to
steps<N>/ next to this file; writes by_size.md (per budget: one row per model, one column per
training-set size) and accuracy_vs_data.png (test and train accuracy against the number of
training images, log x; one line per model and step budget).
"""

from __future__ import annotations

import csv
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_IMAGES = 4000  # the MNIST subset's train split
LABELS = {"resnet20": "ResNet-20 (CNN)", "vit60x6": "ViT 60x6, patch 4"}
COLORS = {"resnet20": "C0", "vit60x6": "C1"}
DEFAULT_SWEEPS = ("runs/sweeps/inductive_bias_digits", "runs/sweeps/inductive_bias_digits_1200")

Results = dict[str, dict[float, dict]]  # model -> train fraction -> metrics


def read_rows(sweep_dir: str) -> tuple[int, Results]:
  """(step budget, {model: {train fraction: metrics}}) for the finished points."""
  by_model: Results = {}
  steps = 0
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    for row in csv.DictReader(f):
      if row["status"] != "finished":
        continue
      steps = max(steps, int(row["step"]))
      model = row["base_config_arg"].split(",")[0]
      by_model.setdefault(model, {})[float(row["data.train_fraction"])] = {
          "test_acc": 1.0 - float(row["test_error"]),
          "train_acc": 1.0 - float(row["train_error"])}
  return steps, by_model


def _head(fractions: list[float]) -> str:
  return " | ".join(f"{round(f * TRAIN_IMAGES):,} ({100 * f:g} %)" for f in fractions)


def write_table(budgets: dict[int, Results]) -> str:
  lines = []
  for steps, by_model in sorted(budgets.items()):
    fractions = sorted({f for per in by_model.values() for f in per})
    for what, key in (("test", "test_acc"), ("train (last 10 steps)", "train_acc")):
      lines += [f"| {steps} steps: {what} accuracy % | {_head(fractions)} |",
                "|---|" + "---|" * len(fractions)]
      for model, per in by_model.items():
        cells = [f"{100 * per[f][key]:.1f}" if f in per else "-" for f in fractions]
        lines.append(f"| {LABELS.get(model, model)} | " + " | ".join(cells) + " |")
      if key == "test_acc" and {"resnet20", "vit60x6"} <= set(by_model):
        cnn, vit = by_model["resnet20"], by_model["vit60x6"]
        cells = [f"{100 * (cnn[f][key] - vit[f][key]):+.1f}" if f in cnn and f in vit else "-"
                 for f in fractions]
        lines.append("| CNN - ViT (points) | " + " | ".join(cells) + " |")
      lines.append("")
  return "\n".join(lines)


def plot(budgets: dict[int, Results], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = ["o-", "s--", "^:"]
  sizes_seen = set()
  for i, (steps, by_model) in enumerate(sorted(budgets.items())):
    for model, per in by_model.items():
      fractions = sorted(per)
      sizes = [round(f * TRAIN_IMAGES) for f in fractions]
      sizes_seen.update(sizes)
      for ax, key in zip(axes, ("test_acc", "train_acc")):
        ax.plot(sizes, [100 * per[f][key] for f in fractions], styles[i % len(styles)],
                color=COLORS.get(model), mfc="none" if i else None,
                label=f"{LABELS.get(model, model)}, {steps} steps")
  for ax, title in zip(axes, ("test accuracy % (1,000 test digits)",
                              "train accuracy % (last 10 steps, augmented)")):
    ax.set_xscale("log")
    ax.set_xticks(sorted(sizes_seen))
    ax.set_xticklabels([f"{s:,}" for s in sorted(sizes_seen)])
    ax.minorticks_off()
    ax.set_xlabel("training images (the same steps of batch 64 for every size)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  budgets: dict[int, Results] = {}
  for sweep_dir in sys.argv[1:] or DEFAULT_SWEEPS:
    if not os.path.exists(os.path.join(sweep_dir, "results.csv")):
      print(f"skipping {sweep_dir}: no results.csv")
      continue
    steps, by_model = read_rows(sweep_dir)
    budgets[steps] = by_model
    out = os.path.join(HERE, f"steps{steps}")
    os.makedirs(out, exist_ok=True)
    for name in ("results.md", "results.csv", "curves.png"):
      if os.path.exists(os.path.join(sweep_dir, name)):
        shutil.copy(os.path.join(sweep_dir, name), os.path.join(out, name))
  table = write_table(budgets)
  with open(os.path.join(HERE, "by_size.md"), "w") as f:
    f.write(table)
  print(table)
  plot(budgets, os.path.join(HERE, "accuracy_vs_data.png"))


if __name__ == "__main__":
  main()
