"""Experiment 3, small scale: the roadmap sweep's accuracies next to the paper's (Table 10).

  python experiments/convnext_roadmap/report.py [SWEEP_WORKDIR]
      (default runs/sweeps/convnext_roadmap_digits)

Reads every point's final_metrics.json / metrics.jsonl / sweep_point.json in the sweep workdir
(configs/sweeps/convnext_roadmap_digits.py: model.step 0..11 x seed 0, 1) and results.json
here (params and GMACs at 224, paper top-1, from roadmap_table.py). Writes digits.md (one row
per step: full-scale figures, the small model's params and MACs from cnn_jax.summary, test
accuracy per seed and mean +- half the seed range, final train loss), digits.json,
roadmap_accuracy.png, and copies the sweep's results.md / results.csv / curves.png to digits/.
If runs/convnext_roadmap_digits_1000/step-S/ exist (the 1,000-step check, README), digits.md
gets a second table: their test accuracy beside the 250-step seed-0 run of the same step.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from cnn_jax import summary  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SWEEP = os.path.join(ROOT, "runs/sweeps/convnext_roadmap_digits")
# The 1,000-step check of some steps (seed 0), run by hand (README): runs/.../step-S/
LONG_RUNS = os.path.join(ROOT, "runs/convnext_roadmap_digits_1000")


def _train_tail(path: str, last: int = 5) -> tuple[float, float]:
  """Mean train loss and accuracy over the last `last` logged train records."""
  losses, accs = [], []
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if "train/loss" in record:
        losses.append(record["train/loss"])
        accs.append(record.get("train/accuracy", float("nan")))
  return float(np.mean(losses[-last:])), float(np.mean(accs[-last:]))


def read_points(sweep_dir: str) -> dict[int, dict[int, dict]]:
  """{roadmap step: {seed: metrics}} for the finished points."""
  points: dict[int, dict[int, dict]] = {}
  for name in sorted(os.listdir(sweep_dir)):
    point = os.path.join(sweep_dir, name)
    final = os.path.join(point, "final_metrics.json")
    if not os.path.exists(final):
      continue
    with open(os.path.join(point, "sweep_point.json")) as f:
      record = json.load(f)
    with open(os.path.join(point, "config.json")) as f:
      config = json.load(f)
    with open(final) as f:
      metrics = json.load(f)
    loss, acc = _train_tail(os.path.join(point, "metrics.jsonl"))
    step, seed = record["overrides"]["model.step"], record["overrides"]["seed"]
    points.setdefault(step, {})[seed] = {
        "test_acc": metrics["accuracy"], "test_loss": metrics["loss"], "train_loss": loss,
        "train_acc": acc, "wall_s": record["wall_s"], "model": config["model"],
        "image_size": config["data"]["image_size"]}
  return points


def main() -> None:
  sweep_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SWEEP
  with open(os.path.join(HERE, "results.json")) as f:
    full = {r["step"]: r for r in json.load(f)}
  points = read_points(sweep_dir)
  rows = []
  for step in sorted(points):
    seeds = points[step]
    first = next(iter(seeds.values()))
    options = {k: v for k, v in first["model"].items() if k != "name"}
    small = summary.summarize("convnext_roadmap", image_size=first["image_size"], **options)
    accs = [100 * seeds[s]["test_acc"] for s in sorted(seeds)]
    rows.append({
        **full[step], "small_params": small["params"], "small_mmacs": small["macs"] / 1e6,
        "seeds": sorted(seeds), "test_acc": accs, "test_acc_mean": float(np.mean(accs)),
        "test_acc_half_range": (max(accs) - min(accs)) / 2,
        "train_loss": float(np.mean([seeds[s]["train_loss"] for s in seeds])),
        "wall_s": [seeds[s]["wall_s"] for s in sorted(seeds)]})
  with open(os.path.join(HERE, "digits.json"), "w") as f:
    json.dump(rows, f, indent=2)

  lines = ["| step | change | params @224 | GMACs @224 | paper top-1 % (IN-1K, 3 seeds) | "
           "params, 1/8 width | MMACs @32 px | test acc. % per seed | mean +- half range | "
           "final train loss |", "|---|" + "---|" * 9]
  for r in rows:
    lines.append(
        f"| {r['step']} | {r['name']} | {r['params'] / 1e6:.2f} M | {r['gmacs']:.2f} | "
        f"{r['paper_top1']:.2f} +- {r['paper_top1_std']:.2f} | {r['small_params']:,} | "
        f"{r['small_mmacs']:.2f} | {' / '.join(f'{a:.1f}' for a in r['test_acc'])} | "
        f"{r['test_acc_mean']:.2f} +- {r['test_acc_half_range']:.2f} | {r['train_loss']:.3f} |")
  stats = []
  if len(rows) > 2:
    paper = np.array([r["paper_top1"] for r in rows])
    ours = np.array([r["test_acc_mean"] for r in rows])
    corr = float(np.corrcoef(paper, ours)[0, 1])
    rank = float(np.corrcoef(np.argsort(np.argsort(paper)), np.argsort(np.argsort(ours)))[0, 1])
    dp, do = np.diff(paper), np.diff(ours)
    moved = [i for i in range(len(dp)) if dp[i] != 0]
    agree = sum(np.sign(dp[i]) == np.sign(do[i]) for i in moved)
    stats = [f"Pearson r (paper top-1, our mean accuracy) over {len(rows)} steps: {corr:+.2f}; "
             f"Spearman rho: {rank:+.2f}.",
             f"Step-to-step changes with the paper's sign: {agree} of {len(moved)}.",
             f"Our accuracy, step {rows[0]['step']} -> step {rows[-1]['step']}: "
             f"{ours[0]:.2f} -> {ours[-1]:.2f} (paper {paper[0]:.2f} -> {paper[-1]:.2f})."]
  long_lines = []
  if os.path.isdir(LONG_RUNS):
    long_lines = ["| step | change | test acc. %, 250 steps (seed 0) | test acc. %, 1,000 steps "
                  "(seed 0) | final train loss, 250 / 1,000 steps |", "|---|---|---|---|---|"]
    by_step = {r["step"]: r for r in rows}
    for name in sorted(os.listdir(LONG_RUNS), key=lambda n: int(n.split("-")[-1])):
      point = os.path.join(LONG_RUNS, name)
      if not os.path.exists(os.path.join(point, "final_metrics.json")):
        continue
      step = int(name.split("-")[-1])
      with open(os.path.join(point, "final_metrics.json")) as f:
        acc = 100 * json.load(f)["accuracy"]
      loss, _ = _train_tail(os.path.join(point, "metrics.jsonl"))
      short = points[step][0]
      long_lines.append(f"| {step} | {by_step[step]['name']} | {100 * short['test_acc']:.1f} | "
                        f"{acc:.1f} | {short['train_loss']:.3f} / {loss:.3f} |")
  text = "\n".join(lines) + "\n\n" + "\n".join(stats) + "\n"
  if long_lines:
    text += "\n" + "\n".join(long_lines) + "\n"
  with open(os.path.join(HERE, "digits.md"), "w") as f:
    f.write(text)
  print(text)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps = [r["step"] for r in rows]
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
  top.errorbar(steps, [r["paper_top1"] for r in rows], yerr=[r["paper_top1_std"] for r in rows],
               marker="o", color="C0", capsize=3)
  top.set_ylabel("paper: ImageNet-1K top-1 %")
  top.set_title("ConvNeXt roadmap: paper (ResNet-50 regime, 300 epochs, Table 10) vs "
                "1/8 width on 4,000 digits (250 steps)", fontsize=9)
  top.grid(alpha=0.3)
  for r in rows:
    bottom.scatter([r["step"]] * len(r["test_acc"]), r["test_acc"], color="C1", s=14, zorder=3)
  bottom.plot(steps, [r["test_acc_mean"] for r in rows], marker="o", color="C1",
              label="ours: test accuracy (dots: seeds, line: mean)")
  bottom.set_ylabel("ours: digits test accuracy %")
  bottom.set_xticks(steps)
  bottom.set_xticklabels([f"{r['step']} {r['name']}" for r in rows], rotation=40, ha="right",
                         fontsize=8)
  bottom.grid(alpha=0.3)
  bottom.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "roadmap_accuracy.png"), dpi=110)

  out = os.path.join(HERE, "digits")
  os.makedirs(out, exist_ok=True)
  for name in ("results.md", "results.csv", "curves.png"):
    src = os.path.join(sweep_dir, name)
    if os.path.exists(src):
      shutil.copy(src, os.path.join(out, name))


if __name__ == "__main__":
  main()
