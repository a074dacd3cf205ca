"""Per-device memory of the training loop's step, replicated vs FSDP, without allocating it.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
  python experiments/fsdp_memory/measure.py \
      --config configs/convnextv2_imagenet_finetune.py:huge \
      --config.mesh.strategy=fsdp --per_device_batch 32 --image_size 224 [--json OUT]

Builds `train.train_and_evaluate`'s step for the config's model, optimizer and task from
abstract values only: the model under `nnx.eval_shape`, the state under `jax.eval_shape`
(`train.create_train_state`), both placed by `parallel.state_sharding` as the loop places them,
and the step jitted by `train.jit_train_step` (same in/out shardings and donation as the loop).
Lowers and compiles it for an abstract batch of `per_device_batch x devices` images and reads
two figures per device:

- state bytes: the sum, over every leaf of the train state, of its shard's size under its
  sharding (params, optimizer state, EMA, ...). Exact: it is what a device must hold.
- XLA's `compiled.memory_analysis()`: argument, output, temporary and aliased (donated) bytes
  of the compiled per-device program; peak ~= argument + output + temp - alias. On CPU the
  temp figure is the CPU compiler's buffer assignment; a GPU's fusions and cuDNN workspaces
  differ, so it is an estimate of the activations, not a GPU measurement.

Nothing of the model's size is ever allocated, so a 660M-parameter model can be sized on a
laptop. Compile one strategy per process: the compiled program for a large model takes GBs of
host memory.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import resource
import sys
import time
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Defined only when run as a script: tests import this module beside cnn_jax.main, whose
  `--config` flag would otherwise be defined twice in one process."""
  config_flags.DEFINE_config_file(
      "config", None, "Training config (get_config); override fields with --config.a.b=v.",
      lock_config=True)
  flags.DEFINE_integer(
      "per_device_batch", None, "Images per device per step (default: the config's batch / "
      "devices); sets data.batch_size = this x devices.")
  flags.DEFINE_integer("image_size", None, "Image side (default: the config's).")
  flags.DEFINE_bool(
      "keep_effective_batch", True, "Raise optimizer.grad_accum_steps so that batch x accum "
      "stays the config's batch (as a user with these devices would; the accumulator is state).")
  flags.DEFINE_multi_string(
      "model_option", [], "KEY=VALUE added to config.model (a constructor option the config "
      "does not list, e.g. remat=True or dtype=bfloat16); repeatable.")
  flags.DEFINE_enum(
      "conv_impl", "xla", ["xla", "auto", "rewrite"], "How convolutions are traced "
      "(cnn_jax.models.layers.conv_impl): xla (default) = lax.conv_general_dilated, the form a "
      "GPU or TPU runs, so the figures stand for those; auto = what this backend trains with (on "
      "CPU the rewritten depthwise and 1x1 convs, whose buffers differ).")
  flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")

# ImageNet-1K's train split: only the schedule's length depends on it, not the memory.
IMAGENET_TRAIN_IMAGES = 1_281_167


def state_bytes_per_device(abstract_state: Any, shardings: Any) -> dict[str, int]:
  """Bytes of each top-level field of the state (params, opt_state, ...) on one device: the
  size of its shard under its sharding (the largest shard, where shards differ)."""
  import jax
  import numpy as np

  def shard_bytes(x, sharding) -> int:
    shape = sharding.shard_shape(x.shape) if x.shape else ()
    return int(np.prod(shape, dtype=np.int64)) * x.dtype.itemsize

  out = {}
  for field in ("step", "params", "model_state", "opt_state", "ema_params"):
    value = getattr(abstract_state, field)
    if value is None:
      continue
    sizes = jax.tree.leaves(jax.tree.map(shard_bytes, value, getattr(shardings, field)))
    out[field] = int(sum(sizes))
  out["total"] = sum(out.values())
  return out


def state_bytes_total(abstract_state: Any) -> int:
  """Bytes of the whole (unsharded) state, for the replicated comparison."""
  import jax
  import numpy as np

  return int(sum(int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize
                 for x in jax.tree.leaves(abstract_state)))


def measure(config: Any, conv_impl: str = "xla") -> dict[str, Any]:
  """Compiles the loop's train step for `config` from abstract state and batch; returns the
  per-device state bytes (exact) and XLA's memory analysis of the compiled step.

  `conv_impl`: how convolutions are traced (see the --conv_impl flag)."""
  from cnn_jax.models import layers

  with layers.conv_impl(conv_impl):
    result = _measure(config)
  result["conv_impl"] = conv_impl
  return result


def _measure(config: Any) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from cnn_jax import data, optim, parallel, train

  mesh = parallel.create_mesh(config)
  parallel.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  if config.task == "fcmae":
    from cnn_jax import fcmae
    task = fcmae.make_task(config)
  else:
    task = train.CLASSIFICATION
  # The model's input channels where it names them (the embedded digits are 1-channel whatever
  # data.channels says).
  size, channels = config.data.image_size, config.model.get("in_channels", config.data.channels)
  info = data.DatasetInfo(name=config.data.name, num_classes=config.model.num_classes,
                          image_shape=(size, size, channels),
                          num_train=IMAGENET_TRAIN_IMAGES, num_eval=50_000)
  accum = config.optimizer.grad_accum_steps
  steps_per_epoch = max(IMAGENET_TRAIN_IMAGES // config.data.batch_size, accum)
  schedule = optim.create_schedule(config, config.num_epochs * steps_per_epoch // accum,
                                   steps_per_epoch // accum)

  start = time.perf_counter()
  model = nnx.eval_shape(lambda: task.build_model(config))
  graphdef, _, params, model_state = train.split_model(model)
  tx = train.build_optimizer(config, schedule, model, params)
  state = jax.eval_shape(lambda p, s: train.create_train_state(config, p, s, tx),
                         params, model_state)
  shardings = parallel.state_sharding(state, mesh, config.mesh.strategy,
                                      config.mesh.fsdp_min_size)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  batch_sharding = parallel.batch_sharding(mesh)
  batch = {
      "image": jax.ShapeDtypeStruct((config.data.batch_size, size, size, channels),
                                    jnp.float32, sharding=batch_sharding),
      "label": jax.ShapeDtypeStruct((config.data.batch_size,), jnp.int32,
                                    sharding=batch_sharding)}
  step_fn = train.jit_train_step(task, config, info, mesh, graphdef, tx, schedule, shardings)
  lowered = step_fn.lower(jax.tree.leaves(abstract_state), batch, {})
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  analysis = compiled.memory_analysis()
  xla = {k: int(getattr(analysis, f"{k}_size_in_bytes"))
         for k in ("argument", "output", "temp", "alias", "generated_code")}
  xla["peak_estimate"] = xla["argument"] + xla["output"] + xla["temp"] - xla["alias"]
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  return {
      "model": config.model.name, "task": config.task, "strategy": config.mesh.strategy,
      "fsdp_min_size": config.mesh.fsdp_min_size, "num_devices": mesh.size,
      "platform": jax.devices()[0].platform, "global_batch": config.data.batch_size,
      "per_device_batch": config.data.batch_size // mesh.size, "image_size": size,
      "grad_accum_steps": accum, "optimizer": config.optimizer.name,
      "ema": bool(config.ema_decay), "dtype": str(config.model.get("dtype", "float32")),
      "remat": bool(config.model.get("remat", False)),
      "num_params": n_params,
      "state_bytes_per_device": state_bytes_per_device(abstract_state, shardings),
      "state_bytes_unsharded": state_bytes_total(state),
      "xla_memory_per_device": xla,
      "lower_s": lower_s, "compile_s": compile_s, "jax_version": jax.__version__,
  }


def format_report(r: dict[str, Any]) -> str:
  gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
  s, x = r["state_bytes_per_device"], r["xla_memory_per_device"]
  return "\n".join([
      f"{r['model']} ({r['num_params']:,} params), task {r['task']}, {r['strategy']} on "
      f"{r['num_devices']} {r['platform']} devices; batch {r['per_device_batch']}/device "
      f"({r['global_batch']} global, x{r['grad_accum_steps']} accumulation), "
      f"{r['image_size']} px, {r['dtype']}",
      "state per device (exact, from the shardings): " + ", ".join(
          f"{k} {gib(v)}" for k, v in s.items()) + f" (unsharded {gib(r['state_bytes_unsharded'])})",
      f"XLA memory_analysis per device: argument {gib(x['argument'])}, output "
      f"{gib(x['output'])}, temp {gib(x['temp'])}, alias {gib(x['alias'])} -> peak estimate "
      f"{gib(x['peak_estimate'])}",
      f"trace+lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s"])


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv: list[str]) -> None:
  from cnn_jax.errors import UserError

  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["config"].present:
    fail("--config is required, e.g. --config configs/convnextv2_imagenet_finetune.py:huge")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax

  config = FLAGS.config
  with config.unlocked():
    effective = config.data.batch_size * config.optimizer.grad_accum_steps
    devices = config.mesh.num_devices if config.mesh.num_devices > 0 else jax.device_count()
    if FLAGS.per_device_batch:
      config.data.batch_size = FLAGS.per_device_batch * devices
    if FLAGS.image_size:
      config.data.image_size = FLAGS.image_size
    for option in FLAGS.model_option:
      key, _, value = option.partition("=")
      try:
        config.model[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        config.model[key] = value  # a bare string, e.g. dtype=bfloat16
    if FLAGS.keep_effective_batch and effective % config.data.batch_size == 0:
      config.optimizer.grad_accum_steps = effective // config.data.batch_size
  load_start = os.getloadavg()[0]
  start = time.perf_counter()
  try:
    result = measure(config, FLAGS.conv_impl)
  except UserError as e:
    fail(str(e))
  result["wall_s"] = time.perf_counter() - start
  result["host"] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                    "load_avg_1m_start": load_start, "load_avg_1m_end": os.getloadavg()[0],
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  print(format_report(result), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from cnn_jax import hostenv
  hostenv.set_xla_flags()  # The figures in results/ were measured with the tools' XLA flags.
  _define_flags()
  app.run(main)
