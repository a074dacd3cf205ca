"""Table and plot of experiment 1 from the runs of run.sh: test accuracy against digit distance.

  python experiments/long_range/report.py [RUNS_DIR [CANVAS [TAG]]]   (default runs/long_range 64)

Writes results.json, results.md (the table) and accuracy_vs_distance.png next to this file
(results96.json, ... for CANVAS 96; its ERF folders are erf96_MODEL_dD). TAG (default: "" at
64 px, else the canvas) names the outputs instead, so a second run at one canvas (TAG 96long:
results96long.json, erf96long_MODEL_dD) does not overwrite the first.
ERF overlay: for each erf_MODEL_dD/erf.json here (`python -m cnn_jax.erf --checkpoint
runs/long_range/MODEL_dD --inputs data --image_size 64 --out experiments/long_range/erf_MODEL_dD`),
the side of the centred square holding 50% / 99% of the trained CNN's ERF map, minus the 14 px
digit size: the largest centre distance at which both digits of an axis-aligned pair fit in that
square (the reach of the centre unit), drawn on the distance axis.
"""

from __future__ import annotations

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"resnet_micro": "ResNet (bottleneck, BN)", "convnext_micro": "ConvNeXt V2",
          "convnext_micro_bn": "ConvNeXt V2, BN",
          "hybrid_micro": "hybrid C-C-T-T", "vit_micro": "ViT /8"}


def collect(runs_dir: str) -> dict[str, dict[int, dict]]:
  results: dict[str, dict[int, dict]] = {}
  for name in sorted(os.listdir(runs_dir)):
    match = re.fullmatch(r"(\w+?)_d(\d+)", name)
    final = os.path.join(runs_dir, name, "final_metrics.json")
    if not match or not os.path.exists(final):
      continue
    with open(final) as f:
      metrics = json.load(f)
    train_acc = None
    log = os.path.join(runs_dir, name, "metrics.jsonl")
    if os.path.exists(log):
      with open(log) as f:
        rows = [json.loads(line) for line in f]
      train_rows = [r for r in rows if "train/accuracy" in r]
      if train_rows:
        train_acc = train_rows[-1]["train/accuracy"]
    results.setdefault(match.group(1), {})[int(match.group(2))] = {
        "test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
        "train_accuracy_last_log": train_acc}
  return results


def main() -> None:
  runs_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/long_range"
  canvas = int(sys.argv[2]) if len(sys.argv) > 2 else 64
  tag = sys.argv[3] if len(sys.argv) > 3 else ("" if canvas == 64 else str(canvas))
  results = collect(runs_dir)
  with open(os.path.join(HERE, f"results{tag}.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  distances = sorted({d for per in results.values() for d in per})
  lines = ["| model | " + " | ".join(f"d = {d} px" for d in distances) + " |",
           "|---|" + "---|" * len(distances)]
  for model in LABELS:
    if model not in results:
      continue
    cells = [f"{100 * results[model][d]['test_accuracy']:.1f}" if d in results[model] else "-"
             for d in distances]
    lines.append(f"| {LABELS[model]} | " + " | ".join(cells) + " |")
  table = "\n".join(lines)
  with open(os.path.join(HERE, f"results{tag}.md"), "w") as f:
    f.write("Test accuracy (%) on unseen digits, chance 50%.\n\n" + table + "\n")
  print(table)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(10, 4.5))
  for model, label in LABELS.items():
    if model in results:
      ds = sorted(results[model])
      ax.plot(ds, [100 * results[model][d]["test_accuracy"] for d in ds], "o-", label=label)
  colours = {m: line.get_color() for m, line in zip(
      [m for m in LABELS if m in results], ax.get_lines())}
  erf_rows = []
  for entry in sorted(os.listdir(HERE)):
    path = os.path.join(HERE, entry, "erf.json")
    match = re.fullmatch(rf"erf{tag}_(\w+?)_d(\d+)", entry)
    if not match or not os.path.exists(path):
      continue
    model, trained_at = match.group(1), int(match.group(2))
    with open(path) as f:
      erf = json.load(f)
    size = erf["image_size"]
    sides = {k: size * erf["area_ratios"][k] ** 0.5 for k in ("0.5", "0.99")}
    erf_rows.append((model, trained_at, sides))
    for key, style in (("0.5", "--"), ("0.99", ":")):
      ax.axvline(sides[key] - 14, color=colours.get(model, "k"), ls=style, lw=1,
                 alpha=1.0 if trained_at == 14 else 0.5,
                 label=f"{LABELS.get(model, model)} (trained d={trained_at}) ERF reach, "
                       f"{float(key):.0%} square")
  if erf_rows:
    lines = ["| model | trained at d | ERF 50% square side | ERF 99% square side | "
             "reach (side - 14 px), 50% / 99% |", "|---|---|---|---|---|"]
    for model, trained_at, sides in erf_rows:
      lines.append(f"| {LABELS.get(model, model)} | {trained_at} | {sides['0.5']:.1f} px | "
                   f"{sides['0.99']:.1f} px | {sides['0.5'] - 14:.1f} / "
                   f"{sides['0.99'] - 14:.1f} px |")
    erf_table = "\n".join(lines)
    with open(os.path.join(HERE, f"results{tag}.md"), "a") as f:
      f.write("\nERF of the trained CNNs (centre unit of the last feature map, 16 test "
              "canvases, RepLKNet log map):\n\n" + erf_table + "\n")
    print(erf_table)
  # resnet_micro's theoretical receptive field is 75 px (7x7/2 stem, 3x3/2 max pool, one 3x3
  # per stage at strides 4..32): beyond 75 - 14 px no unit sees both digits whole.
  ax.axvline(75 - 14, color="k", ls="-.", lw=0.8, label="ResNet theoretical field reach (61 px)")
  ax.axhline(50, color="grey", ls=":", label="chance")
  ax.axvline(14, color="grey", ls="--", lw=0.8)
  ax.text(14.5, 52, "digits touch", fontsize=8, color="grey")
  ax.set_xlabel(f"distance between digit centres (px), {canvas} px canvas, 14 px digits")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("'same digit?' (0/1 digits) against distance")
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, f"accuracy_vs_distance{tag}.png"), dpi=120)


if __name__ == "__main__":
  main()
