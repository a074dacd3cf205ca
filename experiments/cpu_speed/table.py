"""Condenses experiments/cpu_speed/run.sh's JSONs into the Markdown tables of its README.

  python experiments/cpu_speed/table.py [DIR]
"""

import json
import os
import statistics
import sys

MODELS = (("resnet50", "ResNet-50"), ("convnext_tiny", "ConvNeXt-T"))


def load(out: str, name: str) -> dict | None:
  path = os.path.join(out, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def median_step(report: dict, mode: str = "train") -> float:
  [result] = [r for r in report["jax"] if r["mode"] == mode]
  return result["step_time_s"]["median"]


def paired_table(out: str) -> list[str]:
  lines = ["| model, batch 32 | cnn_jax train | PyTorch train | train ratio (pairs) | "
           "cnn_jax infer | PyTorch infer | infer ratio (pairs) | train compile | "
           "XLA memory, train | MFU train | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, label in MODELS:
    result = load(out, f"{name}.json")
    if result is None:
      continue
    train = next(r for r in result["jax"] if r["mode"] == "train")
    torch, pairs = result["torch"], result["ratio_vs_torch_per_pair"]

    def ratio(mode: str) -> str:
      p = pairs[mode]
      return f"{result['ratio_vs_torch'][mode]:.2f}x ({p['min']:.2f}-{p['max']:.2f})"

    lines.append(
        f"| {label} | {median_step(result):.2f} s | "
        f"{torch['train']['step_time_s']['median']:.2f} s | {ratio('train')} | "
        f"{median_step(result, 'infer'):.2f} s | {torch['infer']['step_time_s']['median']:.2f} s "
        f"| {ratio('infer')} | {train['compile_time_s']:.1f} s | "
        f"{train['xla_estimate_bytes'] / 2**30:.2f} GiB | {100 * train['mfu']:.0f} % | "
        f"{result['host']['load_avg_1m_start']:.1f} -> {result['host']['load_avg_1m_end']:.1f} |")
  return lines


def alone_table(out: str) -> list[str]:
  lines = ["| model, batch 32 | cnn_jax (conv_impl auto) | cnn_jax (conv_impl xla) | "
           "auto vs xla | auto without the malloc settings | XLA memory auto / xla | PyTorch | "
           "PyTorch / cnn_jax |",
           "|---|---|---|---|---|---|---|---|"]
  for name, label in MODELS:
    runs = {impl: [r for r in (load(out, f"alone_{name}_{impl}_{k}.json") for k in (1, 2)) if r]
            for impl in ("auto", "xla")}
    if not runs["auto"] or not runs["xla"]:
      continue
    step = {impl: statistics.median(median_step(r) for r in rs) for impl, rs in runs.items()}
    memory = {impl: next(r for r in rs[0]["jax"] if r["mode"] == "train")["xla_estimate_bytes"]
              for impl, rs in runs.items()}
    rounds = {impl: ", ".join(f"{median_step(r):.2f}" for r in rs) for impl, rs in runs.items()}
    no_hugepages = load(out, f"alone_{name}_auto_hugepages0.json")
    torch = load(out, f"torch_alone_{name}.json")
    torch_step = torch["results"]["train"]["step_time_s"]["median"] if torch else None
    lines.append(
        f"| {label} | {step['auto']:.2f} s ({rounds['auto']}) | "
        f"{step['xla']:.2f} s ({rounds['xla']}) | {step['xla'] / step['auto']:.2f}x | "
        + (f"{median_step(no_hugepages):.2f} s | " if no_hugepages else "- | ")
        + f"{memory['auto'] / 2**30:.2f} / {memory['xla'] / 2**30:.2f} GiB | "
        + (f"{torch_step:.2f} s | {torch_step / step['auto']:.2f}x |" if torch_step
           else "- | - |"))
  return lines


def main() -> None:
  out = sys.argv[1] if len(sys.argv) > 1 else "experiments/cpu_speed/results"
  print("\n".join(paired_table(out)))
  print()
  print("\n".join(alone_table(out)))


if __name__ == "__main__":
  main()
