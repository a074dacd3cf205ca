"""Old against new forms of `layers.LayerNorm` and `layers.attention` in one process: each variant's
step compiled once, then timed in alternation (issue 21, item 1; README "vit_micro train").

  python experiments/cpu_speed/forms_ab.py --model vit_micro_patch8_64 --options \
      '{"image_size": 96, "in_channels": 1, "num_classes": 2}' --batch_size 64 --image_size 96 \
      --channels 1 --variants plain,ln,attn,both --rounds 14 [--mode infer]

Variants: "plain" traces nnx.LayerNorm's and the plain softmax attention's own forms, "ln" and
"attn" the CPU form of one of the two, "both" both (the code as it is; the GELU and conv forms
are the code's in every variant). Prints each variant's loss and largest gradient difference
against the first's, and the wall and process CPU time per step (median, min); pin it
(`taskset -c 1`) on a shared machine, where the CPU time is the steadier of the two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import hostenv  # noqa: E402

hostenv.set_xla_flags()

import jax  # noqa: E402  (after the XLA flags)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from cnn_jax.models import create_model, layers, vit  # noqa: E402

VARIANTS = {"plain": (False, False), "ln": (True, False), "attn": (False, True),
            "both": (True, True)}


@contextlib.contextmanager
def forms(layer_norm: bool, attention: bool):
  cpu_layer_norm, cpu_attention = layers.LayerNorm.__call__, vit.attention
  if not layer_norm:
    layers.LayerNorm.__call__ = nnx.LayerNorm.__call__
  if not attention:
    vit.attention = layers._attention_plain
  try:
    yield
  finally:
    layers.LayerNorm.__call__, vit.attention = cpu_layer_norm, cpu_attention


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="vit_micro_patch8_64")
  parser.add_argument("--options", default='{"image_size": 96, "in_channels": 1, "num_classes": 2}')
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=96)
  parser.add_argument("--channels", type=int, default=1)
  parser.add_argument("--variants", default="plain,both")
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--mode", choices=("train", "infer"), default="train")
  args = parser.parse_args()
  variants = args.variants.split(",")
  options = json.loads(args.options)
  model = create_model(args.model, rngs=nnx.Rngs(0), **options)
  if args.mode == "infer":
    model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.random.normal(jax.random.key(0), (args.batch_size, args.image_size, args.image_size,
                                            args.channels))
  y = jax.random.randint(jax.random.key(1), (args.batch_size,), 0,
                         options.get("num_classes", 1000))

  def loss(params, rest, x, y):
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(x)
    # The model's updated state (BatchNorm's statistics, RNG counts) out as well, as a step does.
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            nnx.state(model, nnx.Not(nnx.Param)))

  step = jax.value_and_grad(loss, has_aux=True) if args.mode == "train" else loss
  compiled = {}
  for name in variants:
    with forms(*VARIANTS[name]):  # a new function per variant: jit caches traces by function
      compiled[name] = jax.jit(lambda *a: step(*a)).lower(params, rest, x, y).compile()
  def loss_and_gradients(name):
    out = compiled[name](params, rest, x, y)
    return (out[0][0], out[1]) if args.mode == "train" else (out[0],)

  first = loss_and_gradients(variants[0])
  for name in variants[1:]:
    # Per array, relative to the largest value of that array's kind (loss, or any gradient):
    # a gradient that is zero but for rounding (a bias before BatchNorm) has no scale of its own.
    other = loss_and_gradients(name)
    if args.mode == "infer":
      print(f"{name}: loss {float(first[0]):.7g} against {float(other[0]):.7g} ({variants[0]})")
      continue
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(first[1:]),
                                                               jax.tree.leaves(other[1:])))
    largest = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(first[1:]))
    print(f"{name}: loss {float(first[0]):.7g} against {float(other[0]):.7g} ({variants[0]}); "
          f"largest gradient difference {diff:.2g}, the largest gradient {largest:.2g}")
  wall = {name: [] for name in variants}
  cpu = {name: [] for name in variants}
  for round_ in range(args.rounds + 1):
    for name in variants if round_ % 2 == 0 else variants[::-1]:
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(compiled[name](params, rest, x, y))
      if round_:  # the first round warms up
        wall[name].append(time.perf_counter() - t0)
        cpu[name].append(time.process_time() - c0)
  for name in variants:
    print(f"{name:5s} wall {np.median(wall[name]) * 1e3:8.1f} ms (min {min(wall[name]) * 1e3:8.1f})"
          f"  cpu {np.median(cpu[name]) * 1e3:8.1f} ms (min {min(cpu[name]) * 1e3:8.1f})")


if __name__ == "__main__":
  main()
