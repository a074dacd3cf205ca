"""Tables and plots of experiments/fcmae_ablations from the two sweeps' workdirs.

  python experiments/fcmae_ablations/report.py [--pretrain_dir D1] [--finetune_dir D2]

Run after configs/sweeps/fcmae_ablations_pretrain.py and _finetune.py (their default workdirs
unless given). Writes, next to this file: results.md / results.csv / results.json (one row per
fine-tuning point with its pre-training run's settings and loss), accuracy_bars.png,
finetune_curves.png, pretrain_curves.png and reconstruction.png (the default FCMAE run's last
reconstruction panel: original, masked, reconstruction, reconstruction with visible pixels).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO_ROOT)

from cnn_jax import sweep  # noqa: E402

SWEEPS = os.path.join(REPO_ROOT, "configs", "sweeps")
ORDER = ("scratch", "fcmae", "no_grn", "dense", "mask0.4", "mask0.8", "scratch_long", "fcmae_long")


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _points(name: str, workdir: str | None) -> tuple[list[sweep.Point], str]:
  config = sweep.load_config_file(os.path.join(SWEEPS, f"{name}.py"))
  root = workdir or os.path.join(REPO_ROOT, config.workdir)
  return sweep.build_points(config), root


def pretrain_rows(workdir: str | None) -> dict[str, dict[str, Any]]:
  points, root = _points("fcmae_ablations_pretrain", workdir)
  rows = {}
  for p in points:
    d = os.path.join(root, p.name)
    final = _read_json(os.path.join(d, sweep.FINAL_METRICS))
    rows[p.config.ablation] = {
        "grn": p.config.model.grn, "sparse": p.config.fcmae.sparse,
        "mask_ratio": p.config.fcmae.mask_ratio, "pretrain_eval_loss": final.get("loss"),
        "pretrain_wall_s": _read_json(os.path.join(d, sweep.POINT_RECORD)).get("wall_s"),
        "dir": d}
  return rows


_LABELS: dict[float, int] = {}


def _num_labels(config) -> int:
  """Training images of the point (data.train_fraction rounds per class: 10 % is 149)."""
  if config.data.train_fraction not in _LABELS:
    from cnn_jax.data.sources import embedded
    _LABELS[config.data.train_fraction] = len(embedded.load_arrays(config.data).train.labels)
  return _LABELS[config.data.train_fraction]


def finetune_rows(workdir: str | None, pretrain: dict[str, dict[str, Any]]
                  ) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[tuple[int, float]]]]]:
  points, root = _points("fcmae_ablations_finetune", workdir)
  rows, curves = [], {}
  for p in points:
    c = p.config
    d = os.path.join(root, p.name)
    final = _read_json(os.path.join(d, sweep.FINAL_METRICS))
    source = next((label for label, r in pretrain.items()
                   if c.init_from and os.path.normpath(os.path.join(r["dir"], "encoder")).endswith(
                       os.path.normpath(c.init_from))), None)
    pre = pretrain.get(source, {})
    rows.append({
        "ablation": c.ablation, "init": source or "scratch",
        "grn": c.model.grn, "sparse": pre.get("sparse"), "mask_ratio": pre.get("mask_ratio"),
        "labels": _num_labels(c),
        "epochs": c.num_epochs, "lr": c.optimizer.learning_rate, "seed": c.seed, "step": final.get("step"),
        "test_accuracy": final.get("accuracy"), "test_ema_accuracy": final.get("ema_accuracy"),
        "test_loss": final.get("loss"), "pretrain_eval_loss": pre.get("pretrain_eval_loss"),
        "finetune_wall_s": _read_json(os.path.join(d, sweep.POINT_RECORD)).get("wall_s"),
        "pretrain_wall_s": pre.get("pretrain_wall_s")})
    curves[c.ablation] = sweep.read_curves(d)
  return rows, curves


def _fmt(key: str, value: Any) -> str:
  if value is None:
    return "-"
  if key in ("test_accuracy", "test_ema_accuracy"):
    return f"{100 * value:.1f}"
  if key.endswith("wall_s"):
    return f"{value:.0f}"
  if isinstance(value, float):
    return f"{value:.4f}" if key.endswith("loss") else f"{value:g}"
  return str(value)


COLUMNS = ("ablation", "init", "grn", "sparse", "mask_ratio", "labels", "epochs", "lr", "seed",
           "test_accuracy", "test_ema_accuracy", "test_loss", "pretrain_eval_loss",
           "pretrain_wall_s", "finetune_wall_s")
HEADERS = {"test_accuracy": "test acc %", "test_ema_accuracy": "EMA test acc %",
           "pretrain_eval_loss": "pre-train test loss", "pretrain_wall_s": "pre-train wall s",
           "finetune_wall_s": "fine-tune wall s", "mask_ratio": "mask"}


def _seeds(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
  """The rows of `label` (seed 0) and of its other fine-tuning seeds (`label`_sN)."""
  return [r for r in rows if r["ablation"] == label or (
      r["ablation"].startswith(label + "_s") and r["ablation"][len(label) + 2:].isdigit())]


def seed_summary(rows: list[dict[str, Any]]) -> list[str]:
  """Mean and spread of scratch vs FCMAE over the fine-tuning seeds (10 % labels)."""
  lines = []
  for suffix, lr in (("", "2e-3"), ("_lr5e-4", "5e-4")):
    for side in ("scratch", "fcmae"):
      accs = [r["test_accuracy"] for r in _seeds(rows, side + suffix)
              if r["test_accuracy"] is not None]
      if accs:
        spread = f" +- {100 * statistics.stdev(accs):.1f} (std)" if len(accs) > 1 else ""
        lines.append(f"- lr {lr}, {side}: {100 * statistics.mean(accs):.1f} %{spread} over "
                     f"{len(accs)} seed(s): {', '.join(f'{100 * a:.1f}' for a in accs)}")
  return lines


def write_tables(rows: list[dict[str, Any]]) -> None:
  lines = ["# ConvNeXt V2 ablations at CPU scale: fine-tuned test accuracy", "",
           "| " + " | ".join(HEADERS.get(c, c) for c in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(c, r.get(c)) for c in COLUMNS) + " |")
  lines += ["", "Scratch vs FCMAE (sparse, mask 0.6, GRN), 149 labels, over fine-tuning seeds (one "
            "pre-training run, seed 0):", "",
            *seed_summary(rows), "",
            "test = the 300 held-out digits at the last step. pre-train test loss = the masked "
            "patches' normalised-pixel MSE on the test digits (its own mask ratio, so not "
            "comparable across mask ratios)."]
  with open(os.path.join(HERE, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(HERE, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
      writer.writerow({c: r.get(c) for c in COLUMNS})
  with open(os.path.join(HERE, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)


def plot(rows: list[dict[str, Any]], curves: dict[str, Any], pretrain_dir: str | None) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  # Bars: seed-0 points at 10 % labels, one panel per fine-tuning lr; other seeds as dots.
  by = {r["ablation"]: r for r in rows if r["test_accuracy"] is not None}
  groups = (("fine-tuning lr 2e-3 (the recipe)", [a for a in ORDER if a in by]),
            ("fine-tuning lr 5e-4", [a + "_lr5e-4" for a in ORDER if a + "_lr5e-4" in by]))
  fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), sharey=True)
  for ax, (title, labels) in zip(axes, groups):
    colors = ["tab:gray" if a.startswith("scratch") else "tab:blue" for a in labels]
    ax.bar(range(len(labels)), [100 * by[a]["test_accuracy"] for a in labels], color=colors)
    for i, a in enumerate(labels):
      others = [100 * r["test_accuracy"] for r in _seeds(rows, a)
                if r["ablation"] != a and r["test_accuracy"] is not None]
      ax.plot([i] * len(others), others, "k.", ms=8)
      ax.text(i, 100 * by[a]["test_accuracy"] + 1, f"{100 * by[a]['test_accuracy']:.1f}",
              ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), [a.removesuffix("_lr5e-4") for a in labels],
                  rotation=30, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("test accuracy % (300 digits)")
  fig.suptitle("Fine-tuned on 149 labels (bars: seed 0; dots: fine-tuning seeds 1, 2; "
               "gray: from scratch)", fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "accuracy_bars.png"), dpi=110)
  plt.close(fig)

  base = [a for a in ORDER if not a.endswith("_long")]
  panels = (
      ("149 labels, lr 2e-3, 30 epochs (seed 0)", base),
      ("149 labels, lr 5e-4, 30 epochs (seed 0)", [a + "_lr5e-4" for a in base]),
      ("149 labels: scratch vs FCMAE, 3 seeds",
       [r["ablation"] for side in ("scratch", "fcmae", "scratch_lr5e-4", "fcmae_lr5e-4")
        for r in _seeds(rows, side)]),
      ("120 epochs on 149 labels; 8 epochs on 1,497",
       [a for a in ("scratch_long", "fcmae_long", "scratch_full", "fcmae_full")]))
  fig, axes = plt.subplots(1, 4, figsize=(22, 4.4))
  for ax, (title, names) in zip(axes, panels):
    for name in names:
      series = curves.get(name, {}).get("eval/accuracy")
      if series:
        steps, values = zip(*series)
        ax.plot(steps, [100 * v for v in values], label=name,
                ls="--" if name.startswith("scratch") else "-")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("test accuracy %")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "finetune_curves.png"), dpi=110)
  plt.close(fig)

  pre = pretrain_rows(pretrain_dir)
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, r in pre.items():
    series = sweep.read_curves(r["dir"]).get("train/loss")
    if series:
      steps, values = zip(*series)
      ax.plot(steps, values, label=label)
  ax.set_xlabel("pre-training step")
  ax.set_ylabel("train reconstruction loss (masked patches)")
  ax.set_title("FCMAE pre-training")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "pretrain_curves.png"), dpi=110)
  plt.close(fig)

  if "fcmae" in pre:
    pngs = sorted(glob.glob(os.path.join(pre["fcmae"]["dir"], "reconstructions", "*.png")))
    if pngs:  # 16 px digits: enlarged 6x (nearest) so the patches can be seen
      from PIL import Image
      image = Image.open(pngs[-1])
      image.resize((6 * image.width, 6 * image.height), Image.NEAREST).save(
          os.path.join(HERE, "reconstruction.png"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pretrain_dir", default=None)
  parser.add_argument("--finetune_dir", default=None)
  args = parser.parse_args()
  pre = pretrain_rows(args.pretrain_dir)
  rows, curves = finetune_rows(args.finetune_dir, pre)
  write_tables(rows)
  plot(rows, curves, args.pretrain_dir)
  print(open(os.path.join(HERE, "results.md")).read())


if __name__ == "__main__":
  main()
