"""Why does hybrid_micro not learn the local control? Short fits of variants side by side.

  python experiments/long_range/diagnose_hybrid.py --steps 150 --image_size 32 VARIANT ...

Each variant is a model (configs/longrange.py key or registered name) plus options; every one is
trained with the same minimal AdamW loop (no cnn_jax.train, so nothing but the model differs)
on the distance-14 "same number?" canvases, and prints train loss every 25 steps and the
held-out accuracy at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from cnn_jax.data.sources.long_range import long_range_dataset  # noqa: E402
from cnn_jax.models import create_model  # noqa: E402
from cnn_jax.models.layers import count_params  # noqa: E402

VARIANTS = {
    "convnext": dict(name="convnextv2_atto", dims=(16, 32, 64, 128), depths=(2, 2, 6, 2)),
    "hybrid": dict(name="hybrid_micro"),
    "hybrid_allconv": dict(name="hybrid_micro", stage_types=("conv",) * 4, depths=(2, 2, 6, 2)),
    "vit": dict(name="vit_micro_patch8_64"),
    "resnet": dict(name="convnext_roadmap", step=0, dims=(64, 128, 256, 512), stem_dim=16,
                   depths=(1, 1, 1, 1)),
}


def data(image_size: int, distance: int, num_train: int, num_eval: int, seed: int = 0,
         center: bool = True):
  cfg = ml_collections.ConfigDict(dict(
      image_size=image_size, num_test=1000, split_seed=0,
      long_range=dict(task="same", distance=distance, digit_size=14, digit_classes=2,
                      num_train=num_train, num_eval=num_eval, seed=seed)))
  ds = long_range_dataset(cfg)
  # center=False keeps the background at exactly 0 (only divides by the std).
  norm = lambda x: (x - (ds.mean[0] if center else 0.0)) / ds.std[0]
  return (norm(ds.train.images), ds.train.labels), (norm(ds.test.images), ds.test.labels)


def fit(variant: str, image_size: int, steps: int, lr: float, wd: float, warmup: int,
        batch: int, train, test, seed: int = 0, stem_norm: str = "", **extra) -> dict:
  opts = dict(VARIANTS[variant])
  name = opts.pop("name")
  if name in ("hybrid_micro", "vit_micro_patch8_64"):
    opts["image_size"] = image_size
  opts.update(extra)
  model = create_model(name, num_classes=2, in_channels=1, rngs=nnx.Rngs(seed), **opts)
  if stem_norm:  # swap only the stem's norm, to localise which LayerNorm stalls training
    dim = model.stem.conv.out_features
    model.stem.norm = (nnx.BatchNorm(dim, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
                       if stem_norm == "bn" else nnx.LayerNorm(dim, epsilon=1e-6,
                                                               rngs=nnx.Rngs(0)))
    extra = {**extra, "stem_norm": stem_norm}
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps)
  tx = optax.adamw(sched, weight_decay=wd)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state, x, y):
    def loss_fn(p):
      m = nnx.merge(graphdef, p, rest, copy=True)
      logits = m(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (
          logits, nnx.state(m, nnx.Not(nnx.Param)))
    (loss, (logits, rest)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, upd), rest, opt_state, loss, optax.global_norm(g)

  model.eval()
  eval_graphdef = nnx.graphdef(model)

  @jax.jit
  def predict(params, rest, x):
    return jnp.argmax(nnx.merge(eval_graphdef, params, rest)(x), -1)

  rng = np.random.default_rng(seed)
  xs, ys = train
  t0, losses = time.time(), []
  for i in range(steps):
    idx = rng.integers(0, len(xs), batch)
    params, rest, opt_state, loss, gn = step(params, rest, opt_state, xs[idx], ys[idx])
    losses.append(float(loss))
    if (i + 1) % 25 == 0:
      print(f"  {variant} {extra} step {i + 1}: loss {np.mean(losses[-25:]):.3f} "
            f"grad_norm {float(gn):.3g}", flush=True)
  xt, yt = test
  acc = float(np.mean(np.concatenate([np.asarray(predict(params, rest, xt[j:j + 250]))
                                      for j in range(0, len(xt), 250)]) == yt))
  out = dict(variant=variant, extra=extra, params=count_params(model), steps=steps, lr=lr,
             wd=wd, final_loss=float(np.mean(losses[-25:])), test_acc=acc,
             wall_s=round(time.time() - t0, 1))
  print(out, flush=True)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("variants", nargs="+")
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--distance", type=int, default=14)
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--wd", type=float, default=0.05)
  p.add_argument("--warmup", type=int, default=15)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--num_train", type=int, default=4000)
  p.add_argument("--no_center", action="store_true")
  p.add_argument("--stem_norm", default="", choices=["", "ln", "bn"])
  p.add_argument("--set", action="append", default=[],
                 help="model option for every variant, KEY=PYTHON_LITERAL")
  a = p.parse_args()
  import ast
  extra = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.set)}
  train, test = data(a.image_size, a.distance, a.num_train, 1000, center=not a.no_center)
  for v in a.variants:
    fit(v, a.image_size, a.steps, a.lr, a.wd, a.warmup, a.batch, train, test,
        stem_norm=a.stem_norm, **extra)


if __name__ == "__main__":
  main()
