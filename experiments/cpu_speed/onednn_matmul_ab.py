"""oneDNN's batched matmul against XLA's for the attention's dots, on CPU (issue 21, item 1;
README "vit_micro's attention against PyTorch's", stop 38): how much `layers.attention`'s
oneDNN backward (`_attention_by_onednn`, which the autotune may choose) saves on this machine.

  python experiments/cpu_speed/onednn_matmul_ab.py                 # vit_micro's shapes
  python experiments/cpu_speed/onednn_matmul_ab.py --parts step --rounds 12

Parts:
  dots       q kᵀ, P v and Pᵀ dO at (batch, heads, tokens, head_dim): XLA's dots (YNNPACK's
             where XLA gives them to it) against `onednn.batched_matmul`, each alone, median
             of 20;
  attention  one block's `layers.attention` forward + backward: the CPU form's backward
             against the same backward with its four dots by oneDNN;
  step       the model's whole train step (`bench.prepare_jax`, the loop's own functions) with
             each backward, compiled in this process and timed in alternating rounds.
Run it with `GLIBC_TUNABLES` holding `hostenv.MALLOC_TUNABLES`, as `bench` runs itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cnn_jax import hostenv  # noqa: E402

hostenv.set_xla_flags()
hostenv.run_cpu_inline_if_the_heap_keeps_temporaries()  # As bench, under its malloc settings.

import jax  # noqa: E402  (after the XLA flags)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax import bench  # noqa: E402
from cnn_jax.models import layers, onednn  # noqa: E402

def median_ms(fn, *args, count: int = 20) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(count):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def dots(shape: tuple[int, int, int, int]) -> dict[str, dict[str, float]]:
  b, h, n, d = shape
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.standard_normal((b, h, n, d), np.float32)) for _ in range(2))
  p = jnp.asarray(rng.random((b, h, n, n), np.float32))
  forms = {"q kᵀ": ("bhqd,bhkd->bhqk", (q, k), dict(transpose_b=True)),
           "P v": ("bhqk,bhkd->bhqd", (p, q), {}),
           "Pᵀ dO": ("bhqk,bhqd->bhkd", (p, q), dict(transpose_a=True))}
  result = {}
  for name, (spec, args, flags) in forms.items():
    by_xla = jax.jit(lambda x, y, spec=spec: jnp.einsum(spec, x, y))
    by_onednn = jax.jit(lambda x, y, flags=flags: onednn.batched_matmul(x, y, **flags))
    difference = float(jnp.max(jnp.abs(by_xla(*args) - by_onednn(*args))))
    result[name] = {"xla_ms": median_ms(by_xla, *args),
                    "onednn_ms": median_ms(by_onednn, *args), "max_abs_difference": difference}
  return result


def attention(shape: tuple[int, int, int, int]) -> dict[str, float]:
  b, h, n, d = shape
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((b, h, n, d), np.float32)) for _ in range(3))
  cotangent = jnp.asarray(rng.standard_normal((b, n, h, d), np.float32))
  scale = d ** -0.5

  def gradient():
    return jax.jit(lambda q, k, v: jax.grad(
        lambda q, k, v: jnp.vdot(layers.attention(q, k, v, scale), cotangent),
        argnums=(0, 1, 2))(q, k, v))

  # "rewrite": the CPU forms, untimed (under "auto" the autotune could take oneDNN's for both).
  with layers.conv_impl("rewrite"):
    code = gradient()
    want, code_ms = code(q, k, v), median_ms(code, q, k, v)
    with onednn_backward():
      by_onednn = gradient()
      got, onednn_ms = by_onednn(q, k, v), median_ms(by_onednn, q, k, v)
  error = max(float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w))) for g, w in zip(got, want))
  return {"code_ms": code_ms, "onednn_backward_ms": onednn_ms, "max_relative_difference": error}


def onednn_backward():
  """Within the `with`, `layers.attention`'s CPU form is the one whose backward's dots are
  oneDNN's (`layers._attention_by_onednn`, the form the autotune may choose), read when a step
  is traced; the convs keep their forms."""
  return mock.patch.object(layers, "_attention_keeping_weights", layers._attention_by_onednn)


def step(args: argparse.Namespace) -> dict[str, dict[str, float]]:
  def prepare():
    with layers.conv_impl("rewrite"):  # As in `attention`.
      return bench.prepare_jax(args.model, batch_size=args.batch_size,
                               image_size=args.image_size, num_classes=args.num_classes,
                               num_devices=1, model_kwargs=json.loads(args.model_options))
  prepared = {"code": prepare()}
  with onednn_backward():
    prepared["onednn_backward"] = prepare()
  for p in prepared.values():
    for _ in range(3):
      jax.block_until_ready(p.run_step())
  wall = {name: [] for name in prepared}
  cpu = {name: [] for name in prepared}
  names = list(prepared)
  for round_ in range(args.rounds):
    for name in (names if round_ % 2 == 0 else names[::-1]):
      for _ in range(args.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(prepared[name].run_step())
        wall[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - start_cpu)
  return {name: {"median_ms": statistics.median(wall[name]) * 1e3,
                 "min_ms": min(wall[name]) * 1e3,
                 "cpu_median_ms": statistics.median(cpu[name]) * 1e3} for name in prepared}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default="dots,attention,step")
  parser.add_argument("--shape", default="64,3,145,32", help="batch,heads,tokens,head_dim")
  parser.add_argument("--model", default="vit_micro_patch8_64")
  parser.add_argument("--model_options", default='{"in_channels": 1}', help="JSON, as bench's")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=96)
  parser.add_argument("--num_classes", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=8, help="step: rounds per variant")
  parser.add_argument("--steps", type=int, default=5, help="step: steps per round")
  args = parser.parse_args()
  if onednn.unavailable_reason():
    sys.exit(f"error: oneDNN cannot run here: {onednn.unavailable_reason()}")
  shape = tuple(int(x) for x in args.shape.split(","))
  parts = {"dots": lambda: dots(shape), "attention": lambda: attention(shape),
           "step": lambda: step(args)}
  report = {"shape": shape, "load_avg_1m": os.getloadavg()[0]}
  for part in args.parts.split(","):
    report[part] = parts[part]()
    print(f"{part}: {json.dumps(report[part])}", flush=True)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
