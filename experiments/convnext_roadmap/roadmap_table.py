"""Experiment 3: params and MACs of every ConvNeXt roadmap step next to the paper's accuracy.

  python experiments/convnext_roadmap/roadmap_table.py   # writes results.json and table.md here

Params and MACs are exact counts from cnn_jax.summary (abstract trace, nothing trained) at
224x224, 1000 classes. Paper columns: Liu et al. 2022 (arXiv:2201.03545), Appendix C, Table 10
"Detailed results for modernizing a ResNet-50": ImageNet-1K top-1, mean +- std over 3 seeds,
and GFLOPs (fvcore's count, i.e. multiply-adds) of every step; the rounded top-1 figures are
also in the text of section 2.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import summary  # noqa: E402
from cnn_jax.models.roadmap import ROADMAP_STEP_NAMES  # noqa: E402

# (top-1 % mean, std over 3 seeds, GFLOPs), Table 10 of the paper. Rows the roadmap merges or
# skips: "depthwise conv" alone (78.28 +- 0.08, 2.35 G) before "increase width" (our
# resnextify = both), and kernel sizes 5 / 9 / 11 (80.35 / 80.57 / 80.47).
PAPER = {
    "resnet50": (78.82, 0.07, 4.09), "stage_ratio": (79.36, 0.07, 4.53),
    "patchify_stem": (79.51, 0.18, 4.42), "resnextify": (80.50, 0.02, 5.27),
    "inverted_bottleneck": (80.64, 0.03, 4.64), "move_dw_up": (79.92, 0.08, 4.07),
    "kernel_7": (80.57, 0.14, 4.15), "gelu": (80.62, 0.14, 4.15),
    "fewer_activations": (81.27, 0.06, 4.15), "fewer_norms": (81.41, 0.09, 4.15),
    "layer_norm": (81.47, 0.09, 4.46), "separate_downsampling": (81.97, 0.06, 4.49),
}


def main() -> None:
  here = os.path.dirname(os.path.abspath(__file__))
  rows = []
  for index, name in enumerate(ROADMAP_STEP_NAMES):
    result = summary.summarize("convnext_roadmap", image_size=224, step=index)
    top1, std, gflops = PAPER[name]
    rows.append({"step": index, "name": name, "params": result["params"],
                 "gmacs": result["macs"] / 1e9, "paper_top1": top1, "paper_top1_std": std,
                 "paper_gflops": gflops})
    print(rows[-1], flush=True)
  with open(os.path.join(here, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  lines = ["| step | change | params | GMACs (ours) | paper GFLOPs (= MACs) "
           "| paper top-1 % (3 seeds) |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['step']} | {r['name']} | {r['params']:,} | {r['gmacs']:.3f} | "
                 f"{r['paper_gflops']:.2f} | {r['paper_top1']:.2f} +- {r['paper_top1_std']:.2f} |")
  with open(os.path.join(here, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
