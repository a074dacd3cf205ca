"""Experiment 5: ERF maps of ResNet-50 and ConvNeXt-T at initialisation, and ERF size vs depth.

  python experiments/erf/erf_experiment.py [--num_images 4] [--skip_large]

Part 1: cnn_jax.erf on randomly initialised resnet50, convnext_tiny and convnext_tiny with
LayerScale initialised to 1 instead of 1e-6, at 224x224, averaged over standard-normal noise
images (random init: there is nothing to gain from real images). Writes erf_<model>.png.
Part 2: stacks of n 3x3 stride-1 convs with ReLU (He-normal init, no BN, 8 channels) for n in
1..32 on 97x97 noise: the ERF's radial standard deviation against n (Luo et al. 2016 predict
sqrt(n) growth, so a shrinking fraction of the theoretical 2n+1 receptive field), averaged over
three initialisations. Writes erf_vs_depth.png and results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cnn_jax import erf  # noqa: E402
from cnn_jax.models import create_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class PlainConvStack(nnx.Module):
  """`depth` 3x3 stride-1 convs with ReLUs on one input channel, no bias, no normalisation (the
  stacks of Luo et al. 2016); He-normal weights unless `kernel_init` says otherwise."""

  def __init__(self, depth: int, width: int, seed: int,
               kernel_init: nnx.Initializer = nnx.initializers.variance_scaling(
                   2.0, "fan_in", "normal")):
    rngs = nnx.Rngs(seed)
    self.convs = nnx.List([nnx.Conv(1 if i == 0 else width, width, (3, 3), padding="SAME",
                                    use_bias=False, kernel_init=kernel_init, rngs=rngs)
                           for i in range(depth)])

  def forward_features(self, x):
    for conv in self.convs:
      x = nnx.relu(conv(x))
    return x


def radial_std(erf_map: np.ndarray) -> float:
  """sqrt(E[r^2]) of the ERF taken as a distribution over pixels, r from the centre."""
  h, w = erf_map.shape
  yy, xx = np.mgrid[:h, :w]
  r2 = (yy - h // 2) ** 2 + (xx - w // 2) ** 2
  return float(np.sqrt((erf_map * r2).sum() / erf_map.sum()))


def large_models(num_images: int, results: dict) -> None:
  images = np.random.default_rng(0).standard_normal((num_images, 224, 224, 3), dtype=np.float32)
  for label, name, kwargs in (("resnet50", "resnet50", {}),
                              ("convnext_tiny", "convnext_tiny", {}),
                              ("convnext_tiny_ls1", "convnext_tiny", {"layer_scale_init": 1.0})):
    start = time.perf_counter()
    model = create_model(name, rngs=nnx.Rngs(0), **kwargs)
    erf_map = erf.erf_map(model, images, batch_size=2)
    log_map = erf.normalised_log_map(erf_map)
    ratios = erf.area_ratios(log_map)
    results[label] = {"area_ratios": ratios, "support_side": erf.support_side(erf_map),
                      "radial_std_px": radial_std(erf_map),
                      "seconds": time.perf_counter() - start}
    title = (f"{label} @224, random init, {num_images} noise images"
             + (" (LayerScale init 1)" if kwargs else ""))
    erf.plot_erf(log_map, os.path.join(HERE, f"erf_{label}.png"), title, ratios)
    print(label, results[label], flush=True)


def depth_sweep(results: dict) -> None:
  depths = [1, 2, 4, 8, 16, 32]
  size = 97
  rows = []
  for depth in depths:
    stds, ratios50 = [], []
    for seed in range(3):
      images = np.random.default_rng(seed).standard_normal((4, size, size, 1), dtype=np.float32)
      erf_map = erf.erf_map(PlainConvStack(depth, 8, seed), images, batch_size=4)
      stds.append(radial_std(erf_map))
      ratios50.append(erf.area_ratios(erf.normalised_log_map(erf_map), (0.5,))["0.5"])
    rows.append({"depth": depth, "theoretical_rf": 2 * depth + 1,
                 "radial_std_px": float(np.mean(stds)), "radial_std_sd": float(np.std(stds)),
                 "area_ratio_50": float(np.mean(ratios50))})
    print(rows[-1], flush=True)
  slope = np.polyfit(np.log(depths), np.log([r["radial_std_px"] for r in rows]), 1)[0]
  results["depth_sweep"] = {"rows": rows, "loglog_slope_std_vs_depth": float(slope),
                            "input": f"{size}x{size} noise, 8 channels, 4 images x 3 inits"}
  print(f"log-log slope of the ERF radial std against depth: {slope:.3f}")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  d = np.array(depths, float)
  std = np.array([r["radial_std_px"] for r in rows])
  ax.errorbar(d, std, yerr=[r["radial_std_sd"] for r in rows], marker="o",
              label=f"ERF radial std (slope {slope:.2f})")
  ax.plot(d, std[0] * np.sqrt(d), "--", label="sqrt(depth), from depth 1")
  ax.plot(d, (2 * d + 1) / 2, ":", label="theoretical RF half-width n + 1/2")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("conv layers (3x3, stride 1)")
  ax.set_ylabel("pixels")
  ax.set_title("ERF size vs depth, random-init plain conv stacks")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "erf_vs_depth.png"), dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_images", type=int, default=4)
  parser.add_argument("--skip_large", action="store_true")
  args = parser.parse_args()
  results = {}
  depth_sweep(results)
  if not args.skip_large:
    large_models(args.num_images, results)
  with open(os.path.join(HERE, "results.json"), "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
