"""Experiment 2: per-layer gradient norms of deep plain vs residual nets, at init and trained.

  python experiments/gradient_flow/gradient_flow.py --sweep_workdir runs/sweeps/degradation_digits

For each model (plain20, plain56, resnet20, resnet56 by default) the cross-entropy gradient of
every conv/fc kernel is taken on the same fixed training batch (64 digits, train-mode BatchNorm:
the gradient the optimizer sees at that step), once at the initialisation the degradation sweep
started from (same config, same seed) and once at the sweep's final checkpoint. Writes
gradient_norms.png and gradient_norms.json next to this script. experiments/activations/report.py
reuses run_gradient_norms for any sweep's points.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from cnn_jax import data, optim, train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _layer_order(path: str) -> tuple:
  """stem, layer1.0.conv1, layer1.0.conv2, ..., fc: the order the input flows through."""
  if path.startswith("stem"):
    return (0, 0, path)
  match = re.match(r"layer(\d+)\.(\d+)\.(.*)", path)
  if match:
    return (int(match.group(1)), int(match.group(2)), match.group(3))
  return (99, 0, path)


def kernel_gradient_norms(model, images, labels) -> list[tuple[str, float, float]]:
  """[(layer, ||dL/dW||, ||W||)] for every conv and fc kernel, in forward order."""
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params):
    logits = nnx.merge(graphdef, params, rest, copy=True)(images)
    return train.cross_entropy(logits, labels, logits.shape[-1]).mean()

  grads = optim.named_leaves(jax.jit(jax.grad(loss_fn))(params))
  weights = optim.named_leaves(params)
  rows = []
  for path in sorted((p for p in grads if p.endswith("kernel")), key=_layer_order):
    rows.append((path[:-len(".kernel")], float(jnp.linalg.norm(grads[path])),
                 float(jnp.linalg.norm(weights[path]))))
  return rows


def first_batch(config) -> tuple[jax.Array, jax.Array]:
  """The first training batch of a run's data order (its seed, step 0): images, labels."""
  train_batches, _, _ = data.create_datasets(config)
  batch = next(train_batches.iterate(0))
  return jnp.asarray(batch["image"]), jnp.asarray(batch["label"])


def run_gradient_norms(workdir: str, batch: tuple[jax.Array, jax.Array] | None = None
                       ) -> tuple[dict[str, list[tuple[str, float, float]]],
                                  tuple[jax.Array, jax.Array]]:
  """({"init": rows, "step N": rows}, batch) for one training workdir: the kernel gradient norms
  at the initialisation the run started from (same config, same seed) and at its last
  checkpoint, on `batch` (default: the run's own first batch)."""
  trained, config = train.load_run(workdir, best=False)
  if batch is None:
    batch = first_batch(config)
  step = json.load(open(os.path.join(workdir, "final_metrics.json")))["step"]
  return {"init": kernel_gradient_norms(train.build_model(config), *batch),
          f"step {step}": kernel_gradient_norms(trained, *batch)}, batch


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--sweep_workdir", default="runs/sweeps/degradation_digits")
  parser.add_argument("--models", default="plain20,plain56,resnet20,resnet56")
  args = parser.parse_args()

  results = {}
  batch = None  # The same batch for every model: the first one's first batch.
  for name in args.models.split(","):
    workdir = os.path.join(args.sweep_workdir, f"model.name-{name}")
    results[name], batch = run_gradient_norms(workdir, batch)
    for when, rows in results[name].items():
      norms = [g for _, g, _ in rows]
      print(f"{name} {when}: first-conv |g| {norms[0]:.3g}, last-conv |g| {norms[-2]:.3g}, "
            f"ratio first/last {norms[0] / norms[-2]:.3g}", flush=True)

  with open(os.path.join(HERE, "gradient_norms.json"), "w") as f:
    json.dump(results, f, indent=1)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  whens = list(next(iter(results.values())))
  fig, axes = plt.subplots(1, len(whens), figsize=(6.2 * len(whens), 4.4), sharey=True)
  colours = {"plain": "tab:red", "resnet": "tab:blue"}
  for ax, when in zip(np.atleast_1d(axes), whens):
    for name, by_when in results.items():
      rows = by_when[[w for w in by_when if w.split()[0] == when.split()[0]][0]]
      norms = [g for _, g, _ in rows]
      depth = int(re.sub(r"\D", "", name))
      ax.plot(np.arange(1, len(norms) + 1) / len(norms), norms,
              color=colours["plain" if name.startswith("plain") else "resnet"],
              linestyle="-" if depth > 30 else "--", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("layer position (0 = input, 1 = fc), conv/fc kernels in forward order")
    ax.set_title(f"||dL/dW|| per layer, {when}")
    ax.grid(alpha=0.3, which="both")
  np.atleast_1d(axes)[0].set_ylabel("gradient norm (same batch)")
  np.atleast_1d(axes)[-1].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(HERE, "gradient_norms.png"), dpi=110)
  print(f"wrote {HERE}/gradient_norms.png")


if __name__ == "__main__":
  main()
