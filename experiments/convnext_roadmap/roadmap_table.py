"""Experiment 3: params and MACs of every ConvNeXt roadmap step next to the paper's accuracy.

  python experiments/convnext_roadmap/roadmap_table.py   # writes results.json and table.md here

Params and MACs are exact counts from cnn_jax.summary (abstract trace, nothing trained) at
224x224, 1000 classes. Paper columns: Liu et al. 2022, Fig. 2 and section 2 (ImageNet-1K top-1
of ResNet-50-sized models trained with the ConvNeXt recipe; GFLOPs = MACs, as the paper prints
them, given where the text states them).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import summary  # noqa: E402
from cnn_jax.models.convnext import ROADMAP_STEP_NAMES  # noqa: E402

# (top-1 %, GFLOPs stated in the text or None)
PAPER = {
    "resnet50": (78.8, 4.1), "stage_ratio": (79.4, None), "patchify_stem": (79.5, None),
    "resnextify": (80.5, 5.3), "inverted_bottleneck": (80.6, 4.6), "move_dw_up": (79.9, 4.1),
    "kernel_7": (80.6, 4.2), "gelu": (80.6, None), "fewer_activations": (81.3, None),
    "fewer_norms": (81.4, None), "layer_norm": (81.5, None), "separate_downsampling": (82.0, 4.5),
}


def main() -> None:
  here = os.path.dirname(os.path.abspath(__file__))
  rows = []
  for index, name in enumerate(ROADMAP_STEP_NAMES):
    result = summary.summarize("convnext_roadmap", image_size=224, step=index)
    top1, gflops = PAPER[name]
    rows.append({"step": index, "name": name, "params": result["params"],
                 "gmacs": result["macs"] / 1e9, "paper_top1": top1, "paper_gflops": gflops})
    print(rows[-1], flush=True)
  with open(os.path.join(here, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  lines = ["| step | change | params | GMACs (ours) | paper GFLOPs (= MACs) | paper top-1 % |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    paper_g = f"{r['paper_gflops']:.1f}" if r["paper_gflops"] else "-"
    lines.append(f"| {r['step']} | {r['name']} | {r['params']:,} | {r['gmacs']:.3f} | "
                 f"{paper_g} | {r['paper_top1']:.1f} |")
  with open(os.path.join(here, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
