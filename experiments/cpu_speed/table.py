"""Condenses experiments/cpu_speed/run.sh's JSONs into the README's Markdown table.

  python experiments/cpu_speed/table.py [DIR]
"""

import json
import os
import sys


def row(label: str, path: str) -> str:
  with open(path) as f:
    result = json.load(f)
  jax_runs = {r["mode"]: r for r in result["jax"]}
  train, infer = jax_runs["train"], jax_runs["infer"]
  torch = result["torch"]
  pairs = result["ratio_vs_torch_per_pair"]

  def ratio(mode: str) -> str:
    p = pairs[mode]
    return f"{result['ratio_vs_torch'][mode]:.2f}x ({p['min']:.2f}-{p['max']:.2f})"

  return (f"| {label} | {train['step_time_s']['median']:.2f} s | "
          f"{torch['train']['step_time_s']['median']:.2f} s | {ratio('train')} | "
          f"{infer['step_time_s']['median']:.2f} s | "
          f"{torch['infer']['step_time_s']['median']:.2f} s | {ratio('infer')} | "
          f"{train['compile_time_s']:.1f} s | "
          f"{train['xla_estimate_bytes'] / 2**30:.2f} GiB | {100 * train['mfu']:.0f} % | "
          f"{result['host']['load_avg_1m_start']:.1f} -> {result['host']['load_avg_1m_end']:.1f} |")


def main() -> None:
  out = sys.argv[1] if len(sys.argv) > 1 else "experiments/cpu_speed/results"
  print("| model | cnn_jax train | PyTorch train | train ratio (pairs) | cnn_jax infer | "
        "PyTorch infer | infer ratio (pairs) | train compile | XLA memory, train | MFU train "
        "| load |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for name, label in (("resnet50", "ResNet-50, batch 32"),
                      ("convnext_tiny", "ConvNeXt-T, batch 32"),
                      ("resnet50_b16", "ResNet-50, batch 16"),
                      ("resnet50_b16_no_hugepages", "ResNet-50, batch 16, no huge pages")):
    path = os.path.join(out, f"{name}.json")
    if os.path.exists(path):
      print(row(label, path))


if __name__ == "__main__":
  main()
