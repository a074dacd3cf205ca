"""Speed of one model: images/s, step time, compile time, memory and MFU; optionally vs PyTorch.

  python -m cnn_jax.bench --model resnet50 --batch_size 32
  python -m cnn_jax.bench --model convnext_tiny --batch_size 32 --mode infer --json
  python -m cnn_jax.bench --model resnet50 --batch_size 32 --vs_torch \
      [--torch_python /path/to/venv_with_torch/bin/python]

What is timed:
- `--mode train`: `train.train_step` (forward, cross-entropy, backward, AdamW update), jitted
  with the same shardings and buffer donation as `train.train_and_evaluate`.
- `--mode infer`: `train.eval_step` on the eval-mode model (forward, loss and accuracy sums).
- `--mode fcmae`: the FCMAE pre-training step of `cnn_jax.fcmae` (ConvNeXt encoders).
The data are one synthetic batch, placed on the devices once, so only the model is measured;
`--with_data` pulls every batch from the synthetic grain pipeline (uint8 decode, ImageNet
augmentation, normalisation) and shards it each step, as training does.

Each measured step ends with `block_until_ready`, so a step's time is the time to its result.
`--warmup` steps run before timing (the first compiles nothing: compilation is done ahead and
timed on its own, `jit(...).lower(...).compile()`).

Model FLOPs utilisation (MFU) = model FLOPs per step / median step time / peak FLOP/s.
Model FLOPs come from `cnn_jax.summary` (2 x the conv and matmul MACs of the forward); a train
step counts 3 x the forward (the backward is twice the forward), the usual MFU convention, so
rematerialisation and other extra work do not raise it. XLA's own count of the compiled
program is reported beside it (`xla_flops`). Peak: a table of dense peaks for GPUs and TPUs
(`PEAK_FLOPS`); on CPU, the best of a few large jitted matmuls measured in the same run
(`--peak_flops` overrides both).

`--vs_torch` measures the train step and inference of the same model (timm, else
torchvision), batch, resolution and dtype in PyTorch eager, in a second process started with
`--torch_python` (default: this Python), and prints the speed ratios
PyTorch time / cnn_jax time (> 1: cnn_jax is faster). On shared machines absolute times
drift; ratios from one run are the figure to compare.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from cnn_jax.errors import UserError
from cnn_jax.timing import step_time_stats

MODES = ("train", "infer", "fcmae")
DTYPES = ("float32", "bfloat16", "float16")
TORCH_INSTALL = "pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31"
TORCH_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_torch.py")

# Dense peak FLOP/s per chip (no structured sparsity), from the vendors' data sheets, keyed by
# a lower-case substring of `device.device_kind`; the first match wins, so specific names
# (h100 pcie) come before general ones (h100). float32 on NVIDIA Ampere and later is the TF32
# tensor-core peak: XLA's default matmul/conv precision lets cuBLAS/cuDNN use TF32. On TPUs
# float32 matmuls run as bfloat16 passes at default precision, so the bf16 peak is listed.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h100 pcie", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("h100", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("h200", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("gh200", {"bfloat16": 989e12, "float16": 989e12, "float32": 495e12}),
    ("b200", {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    ("a100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("a10g", {"bfloat16": 70e12, "float16": 70e12, "float32": 35e12}),
    ("l40s", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    ("l4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("a10", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    ("v100", {"float16": 125e12, "bfloat16": 125e12, "float32": 15.7e12}),
    ("t4", {"float16": 65e12, "bfloat16": 65e12, "float32": 8.1e12}),
    ("rtx 4090", {"bfloat16": 165e12, "float16": 165e12, "float32": 82.6e12}),
    ("rtx 3090", {"bfloat16": 71e12, "float16": 71e12, "float32": 35.6e12}),
    ("tpu v6", {"bfloat16": 918e12, "float16": 918e12, "float32": 918e12}),
    ("tpu v5p", {"bfloat16": 459e12, "float16": 459e12, "float32": 459e12}),
    ("tpu v5 lite", {"bfloat16": 197e12, "float16": 197e12, "float32": 197e12}),
    ("tpu v5e", {"bfloat16": 197e12, "float16": 197e12, "float32": 197e12}),
    ("tpu v4", {"bfloat16": 275e12, "float16": 275e12, "float32": 275e12}),
    ("tpu v3", {"bfloat16": 123e12, "float16": 123e12, "float32": 123e12}),
    ("tpu v2", {"bfloat16": 45e12, "float16": 45e12, "float32": 45e12}),
)


def table_peak_flops(device_kind: str, dtype: str) -> float | None:
  """The data-sheet peak of one chip for `dtype`, or None for a device not in the table."""
  kind = device_kind.lower()
  for key, peaks in PEAK_FLOPS:
    if key in kind:
      return peaks.get(dtype)
  return None


def measure_cpu_matmul_peak(dtype: str = "float32", size: int = 2048, repeats: int = 4) -> float:
  """FLOP/s of the fastest of a few jitted size x size matmuls on the default CPU device.

  The fastest, not the median: the peak is what the hardware can do, and on a shared machine
  slower repeats measure the neighbours, not the CPU."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size ** 3 / best


# ----------------------------------------------------------------------------- JAX side

def _bench_config(model_name: str, batch_size: int, image_size: int, in_channels: int,
                  num_classes: int, model_kwargs: dict[str, Any], num_devices: int) -> Any:
  from cnn_jax import config as base_config

  config = base_config.get_config()
  config.model = {"name": model_name, **model_kwargs}
  config.data.source = "synthetic"
  config.data.name = "synthetic"
  config.data.image_size = image_size
  config.data.channels = in_channels
  if in_channels != 3:  # The ImageNet statistics are per RGB channel.
    config.data.mean, config.data.std = (0.5,) * in_channels, (0.5,) * in_channels
  config.data.batch_size = batch_size
  config.data.eval_batch_size = batch_size
  config.data.synthetic.num_classes = num_classes
  config.data.synthetic.num_train = batch_size * 4  # the pipeline wraps around
  config.data.synthetic.num_eval = batch_size
  config.mesh.num_devices = num_devices
  # AdamW with a constant rate: the step every config here trains with, and the one the
  # PyTorch side runs.
  config.optimizer.name = "adamw"
  return config


def _build_model(config: Any, image_size: int) -> Any:
  """train.build_model, passing `image_size` to the models whose constructor takes it (ViT)."""
  from cnn_jax import train

  with_size = config.copy_and_resolve_references()
  with_size.model.image_size = image_size
  try:
    return train.build_model(with_size)
  except UserError as e:
    if "unexpected keyword argument 'image_size'" not in str(e):
      raise
  return train.build_model(config)


def _synthetic_batch(batch_size: int, image_size: int, in_channels: int, num_classes: int,
                     seed: int = 0) -> dict[str, Any]:
  import numpy as np

  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((batch_size, image_size, image_size, in_channels),
                                       dtype=np.float32),
          "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
          "mask": np.ones((batch_size,), np.float32)}


def _cost_flops(compiled: Any) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # Not every backend implements it; the figure is informative only.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def _memory_figures(compiled: Any, devices: Sequence[Any]) -> dict[str, Any]:
  """Peak device memory: the allocator's own peak where the backend keeps one (GPU, TPU),
  else XLA's static estimate of the compiled step (arguments + outputs + temporaries)."""
  out: dict[str, Any] = {"peak_device_bytes": None, "peak_device_source": None,
                         "xla_estimate_bytes": None}
  try:
    analysis = compiled.memory_analysis()
    if analysis is not None:
      out["xla_estimate_bytes"] = int(
          analysis.argument_size_in_bytes + analysis.output_size_in_bytes
          + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  except Exception:  # Optional in PJRT; leave the field empty.
    pass
  stats = [d.memory_stats() for d in devices]
  peaks = [s.get("peak_bytes_in_use") for s in stats if s]
  if peaks and all(p is not None for p in peaks):
    out["peak_device_bytes"] = int(max(peaks))
    out["peak_device_source"] = "allocator peak_bytes_in_use (max over devices)"
  elif out["xla_estimate_bytes"] is not None:
    out["peak_device_bytes"] = out["xla_estimate_bytes"]
    out["peak_device_source"] = "XLA memory_analysis of the step (no allocator stats)"
  return out


def _forward_flops(graphdef: Any, params: Any, model_state: Any,
                   input_shape: tuple[int, ...]) -> int:
  """2 x the conv/matmul MACs of one forward of a model that is not in the registry (FCMAE)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from cnn_jax import summary

  closed = jax.make_jaxpr(lambda p, s, x: nnx.merge(graphdef, p, s)(x))(
      params, model_state, jax.ShapeDtypeStruct(input_shape, jnp.float32))
  stats: dict[str, Any] = {}
  summary.walk_jaxpr(closed.jaxpr, stats, set())
  return 2 * sum(s.macs for s in stats.values())


def _time_steps(run_step, num_steps: int) -> list[float]:
  import jax

  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    jax.block_until_ready(run_step())
    times.append(time.perf_counter() - start)
  return times


def _fcmae_module():
  try:
    from cnn_jax import fcmae  # noqa: F401 (written separately; may not exist yet)
  except ImportError:
    raise UserError("--mode fcmae needs cnn_jax/fcmae.py, which this checkout does not have "
                    "yet; use --mode train or --mode infer") from None
  return fcmae


def benchmark_jax(model_name: str, *, steps: int = 20, warmup: int = 3,
                  **kwargs: Any) -> dict[str, Any]:
  """Times `mode` for one model in JAX; returns every figure as a JSON-serialisable dict.

  kwargs: those of `prepare_jax`."""
  if steps < 1 or warmup < 0:
    raise UserError(f"need steps >= 1 and warmup >= 0 (got {steps}, {warmup})")
  prepared = prepare_jax(model_name, **kwargs)
  warm_times = _time_steps(prepared.run_step, warmup)
  return prepared.finish(warm_times, _time_steps(prepared.run_step, steps))


@dataclasses.dataclass(frozen=True)
class PreparedStep:
  """A compiled step: run_step() runs one and returns its (not yet ready) outputs;
  finish(warm_times, times) turns measured times into `benchmark_jax`'s result dict."""
  run_step: Callable[[], Any]
  finish: Callable[[list[float], list[float]], dict[str, Any]]
  batch_size: int
  image_size: int
  in_channels: int
  num_classes: int
  dtype: str


def prepare_jax(model_name: str, *, mode: str = "train", batch_size: int = 64,
                image_size: int | None = None, dtype: str = "float32",
                with_data: bool = False, num_devices: int = -1, num_classes: int | None = None,
                peak_flops: float | None = None, model_kwargs: dict[str, Any] | None = None
                ) -> PreparedStep:
  """Builds and compiles the step of `mode` on synthetic data (or the pipeline's)."""
  import jax
  import jax.numpy as jnp
  import optax

  from cnn_jax import data, parallel, summary, train
  from cnn_jax import optim

  if mode not in MODES:
    raise UserError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
  if dtype not in DTYPES:
    raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
  if batch_size < 1:
    raise UserError(f"need batch_size >= 1 (got {batch_size})")
  if mode == "fcmae":
    _fcmae_module()
  model_kwargs = dict(model_kwargs or {})
  if dtype != "float32":
    model_kwargs["dtype"] = jnp.dtype(dtype)
  if num_classes is not None:
    model_kwargs["num_classes"] = num_classes

  # Resolves the model's default size, channels and classes, and counts its FLOPs.
  info = summary.summarize(model_name, image_size=image_size, batch_size=batch_size,
                           **model_kwargs)
  image_size, in_channels = info["image_size"], info["in_channels"]
  num_classes = info["num_classes"]
  forward_flops = info["batch"]["flops"]
  model_flops = 3 * forward_flops if mode in ("train", "fcmae") else forward_flops

  config = _bench_config(model_name, batch_size, image_size, in_channels, num_classes,
                         model_kwargs, num_devices)
  mesh = parallel.create_mesh(config)
  parallel.check_batch_divisible(batch_size, mesh, "--batch_size")
  model = _build_model(config, image_size)
  train.check_input_shape(model, batch_size, (image_size, image_size, in_channels))
  train_graphdef, eval_graphdef, params, model_state = train.split_model(model)
  schedule = optax.constant_schedule(config.optimizer.learning_rate)
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)

  if mode == "infer":
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             model_state=model_state, opt_state=())
    state_shardings = parallel.state_sharding(state, mesh)
    state = jax.device_put(state, state_shardings)
    step_fn = jax.jit(functools.partial(train.eval_step, graphdef=eval_graphdef),
                      in_shardings=(state_shardings, batch_sharding), out_shardings=replicated)
  elif mode == "train":
    tx = optim.create_optimizer(config, schedule, params=params)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             model_state=model_state, opt_state=tx.init(params))
    state_shardings = parallel.state_sharding(state, mesh)
    state = jax.device_put(state, state_shardings)
    step_fn = jax.jit(
        functools.partial(train.train_step, graphdef=train_graphdef, tx=tx, schedule=schedule,
                          label_smoothing=0.0),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated), donate_argnums=(0,))
  else:
    fcmae = _fcmae_module()
    if "fcmae" not in config or not hasattr(fcmae, "build_model"):
      raise UserError("cnn_jax.fcmae in this checkout has no build_model/config.fcmae yet")
    # The mask patch is the encoder's total stride: one patch per final feature position.
    config.fcmae.patch_size = getattr(model, "total_stride", config.fcmae.patch_size)
    fcmae_model = fcmae.build_model(config)
    train_graphdef, eval_graphdef, params, model_state = train.split_model(fcmae_model)
    forward_flops = _forward_flops(eval_graphdef, params, model_state,
                                   (batch_size, image_size, image_size, in_channels))
    model_flops = 3 * forward_flops
    tx = optim.create_optimizer(config, schedule, params=params)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             model_state=model_state, opt_state=tx.init(params))
    state_shardings = parallel.state_sharding(state, mesh)
    state = jax.device_put(state, state_shardings)
    step_fn = jax.jit(
        functools.partial(fcmae.train_step, graphdef=train_graphdef, tx=tx, schedule=schedule,
                          **fcmae.step_options(config, None)),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  if with_data:
    config.data.augment = "imagenet"
    train_batches, _, _ = data.create_datasets(config)
    batches = train_batches.iterate(0)
    next_batch = lambda: parallel.shard_batch(next(batches), mesh)  # noqa: E731
    example = next_batch()
  else:
    example = parallel.shard_batch(
        _synthetic_batch(batch_size, image_size, in_channels, num_classes), mesh)
    next_batch = lambda: example  # noqa: E731
  if mode == "infer":
    example = dict(example)
    example.setdefault("mask", jnp.ones((batch_size,), jnp.float32))

  start = time.perf_counter()
  lowered = step_fn.lower(state, example)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  holder = {"state": state}

  def run_step():
    batch = next_batch()
    if mode == "infer":
      if "mask" not in batch:
        batch = {**batch, "mask": example["mask"]}
      return compiled(holder["state"], batch)
    holder["state"], out = compiled(holder["state"], batch)
    return out

  finish = functools.partial(
      _finish_jax, model_name=model_name, mode=mode, batch_size=batch_size,
      image_size=image_size, in_channels=in_channels, num_classes=num_classes, dtype=dtype,
      with_data=with_data, lower_s=lower_s, compile_s=compile_s, compiled=compiled,
      devices=list(mesh.devices.flat), model_flops=model_flops, forward_flops=forward_flops,
      peak_flops=peak_flops)
  return PreparedStep(run_step, finish, batch_size, image_size, in_channels, num_classes, dtype)


def _finish_jax(warm_times: list[float], times: list[float], *, model_name: str, mode: str,
                batch_size: int, image_size: int, in_channels: int, num_classes: int,
                dtype: str, with_data: bool, lower_s: float, compile_s: float, compiled: Any,
                devices: list[Any], model_flops: int, forward_flops: int,
                peak_flops: float | None) -> dict[str, Any]:
  import jax

  stats = step_time_stats(times)
  steps, warmup = len(times), len(warm_times)
  platform_name = devices[0].platform
  device_kind = devices[0].device_kind
  if peak_flops:
    peak, peak_source = float(peak_flops), "--peak_flops"
  elif platform_name == "cpu":
    # The fake CPU devices of --xla_force_host_platform_device_count share the same cores:
    # the peak is the host's, not per device.
    peak, peak_source = measure_cpu_matmul_peak(dtype), "measured: best 2048x2048 jitted matmul"
  else:
    per_chip = table_peak_flops(device_kind, dtype)
    peak = per_chip * len(devices) if per_chip else None
    peak_source = (f"data sheet: {device_kind} x {len(devices)}" if per_chip
                   else f"unknown device kind {device_kind!r} (pass --peak_flops)")

  result: dict[str, Any] = {
      "framework": "jax",
      "model": model_name,
      "mode": mode,
      "batch_size": batch_size,
      "image_size": image_size,
      "in_channels": in_channels,
      "num_classes": num_classes,
      "dtype": dtype,
      "with_data": with_data,
      "steps": steps,
      "warmup": warmup,
      "images_per_sec": batch_size / stats["median"],
      "step_time_s": stats,
      "step_times_s": times,
      "warmup_times_s": warm_times,
      "lower_time_s": lower_s,
      "compile_time_s": compile_s,
      "model_flops_per_step": model_flops,
      "forward_flops_per_step": forward_flops,
      "xla_flops_per_step": _cost_flops(compiled),
      "peak_flops": peak,
      "peak_flops_source": peak_source,
      "mfu": model_flops / stats["median"] / peak if peak else None,
      "platform": platform_name,
      "device_kind": device_kind,
      "num_devices": len(devices),
      "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "jax_version": jax.__version__,
      "backend_env": {k: os.environ[k] for k in ("XLA_FLAGS", "JAX_PLATFORMS", "GLIBC_TUNABLES")
                      if k in os.environ},
  }
  result.update(_memory_figures(compiled, devices))
  return result


# ----------------------------------------------------------------------------- PyTorch side

def check_torch(torch_python: str | None) -> str:
  """The Python to run the PyTorch side with; UserError (how to install) if it lacks torch."""
  python = torch_python or sys.executable
  try:
    probe = subprocess.run([python, "-c", "import torch, timm"], capture_output=True)
  except OSError as e:
    raise UserError(f"--torch_python={python!r} cannot be run: {e.strerror or e}") from None
  if probe.returncode:
    raise UserError(f"--vs_torch needs PyTorch and timm in {python} (an optional extra: "
                    f"{TORCH_INSTALL}, or pass --torch_python=A_PYTHON_WITH_TORCH)")
  return python


class TorchWorker:
  """cnn_jax/bench_torch.py --serve in a second process: times PyTorch steps on request."""

  def __init__(self, python: str, model_name: str, *, batch_size: int, image_size: int,
               in_channels: int, num_classes: int, dtype: str):
    import tempfile

    self._stderr = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(
        [python, TORCH_WORKER, "--serve", "--model", model_name, "--batch_size",
         str(batch_size), "--image_size", str(image_size), "--in_channels", str(in_channels),
         "--num_classes", str(num_classes), "--dtype", dtype],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        bufsize=1)
    self.meta = self._reply()["ready"]

  def _reply(self) -> dict[str, Any]:
    for line in self._proc.stdout:
      if line.startswith("{"):
        out = json.loads(line)
        if "error" in out:
          self.close()
          raise UserError(f"PyTorch side: {out['error']}")
        return out
    self._stderr.seek(0)
    last = (self._stderr.read().strip().splitlines() or ["no output"])[-1]
    self.close()
    raise RuntimeError(f"the PyTorch benchmark process failed: {last}")

  def run_steps(self, mode: str, count: int) -> list[float]:
    self._proc.stdin.write(f"{mode} {count}\n")
    self._proc.stdin.flush()
    return self._reply()["times"]

  def close(self) -> None:
    if self._proc.poll() is None:
      try:
        self._proc.stdin.write("quit\n")
        self._proc.stdin.flush()
        self._proc.wait(timeout=60)
      except (OSError, subprocess.TimeoutExpired):
        self._proc.kill()
    self._stderr.close()


# Idle time before each turn once the other framework has run: their thread pools spin for a
# moment after their work ends, and that must not land in the next step's time.
_SETTLE_S = 0.2
# Timed steps per turn. Each turn also runs one untimed step first: the first step after the
# other framework's turn runs up to ~40 % slower (measured on this project's CPU VM for cnn_jax
# after a 2 s sleep: ResNet-50 b32 5.2-5.5 s vs 3.7-4.0 s back to back, the next step normal
# again; likely the VM reclaiming memory freed at the end of a step). A training loop never
# waits between steps, so that step is not what users get.
_TURN_STEPS = 2


def _paired_times(jax_step: Callable[[], Any], worker: TorchWorker, mode: str, steps: int,
                  warmup: int) -> tuple[list[float], list[float], list[float], list[float]]:
  """Alternates turns of the two frameworks, one untimed step and up to `_TURN_STEPS` timed
  ones each, until each has `steps` timed steps: (jax warm-up, jax, torch warm-up, torch)."""
  jax_warm = _time_steps(jax_step, warmup)
  torch_warm = worker.run_steps(mode, warmup) if warmup else []
  jax_times, torch_times = [], []
  while len(jax_times) < steps:
    count = min(_TURN_STEPS, steps - len(jax_times))
    time.sleep(_SETTLE_S)
    jax_times += _time_steps(jax_step, 1 + count)[1:]
    time.sleep(_SETTLE_S)
    torch_times += worker.run_steps(mode, 1 + count)[1:]
  return jax_warm, jax_times, torch_warm, torch_times


# ----------------------------------------------------------------------------- report

def _fmt_bytes(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def format_report(report: dict[str, Any]) -> str:
  host = report["host"]
  lines = [f"host: {host['cpus']} CPUs, load average {host['load_avg_1m_start']:.1f} at the "
           f"start, {host['load_avg_1m_end']:.1f} at the end"]
  for r in report["jax"]:
    t = r["step_time_s"]
    lines += [
        f"cnn_jax {r['model']} {r['mode']}: batch {r['batch_size']}, {r['image_size']} px, "
        f"{r['dtype']}, {r['num_devices']} {r['platform']} device(s) ({r['device_kind']})"
        + (", with input pipeline" if r["with_data"] else ", synthetic on-device batch"),
        f"  images/s        {r['images_per_sec']:.1f}",
        f"  step time       median {t['median'] * 1e3:.1f} ms  (p10 {t['p10'] * 1e3:.1f}, "
        f"p90 {t['p90'] * 1e3:.1f}, min {t['min'] * 1e3:.1f}, max {t['max'] * 1e3:.1f}; "
        f"{r['steps']} steps after {r['warmup']} warm-up)",
        f"  compile time    {r['compile_time_s']:.1f} s (+ {r['lower_time_s']:.1f} s trace/lower)",
        f"  peak memory     {_fmt_bytes(r['peak_device_bytes'])} ({r['peak_device_source']}); "
        f"host RSS peak {_fmt_bytes(r['host_peak_rss_bytes'])}",
    ]
    model_tf = r["model_flops_per_step"] / 1e12
    xla = r["xla_flops_per_step"]
    lines.append(f"  model FLOPs     {model_tf:.3f} TFLOP/step"
                 + (f" (XLA counts {xla / 1e12:.3f})" if xla else ""))
    if r["mfu"] is not None:
      lines.append(f"  MFU             {100 * r['mfu']:.1f} % of {r['peak_flops'] / 1e9:.1f} "
                   f"GFLOP/s ({r['peak_flops_source']})")
    else:
      lines.append(f"  MFU             n/a ({r['peak_flops_source']})")
  for mode, r in (report.get("torch") or {}).items():
    t = r["step_time_s"]
    lines.append(f"PyTorch {r['source']} {mode}: median {t['median'] * 1e3:.1f} ms (p10 "
                 f"{t['p10'] * 1e3:.1f}, p90 {t['p90'] * 1e3:.1f}), {r['images_per_sec']:.1f} "
                 f"images/s; torch {r['torch_version']}, {r['threads']} threads")
  for mode, ratio in (report.get("ratio_vs_torch") or {}).items():
    pairs = report["ratio_vs_torch_per_pair"][mode]
    lines.append(f"ratio {mode}: {ratio:.2f}x  (PyTorch median step time / cnn_jax median step "
                 f"time, > 1 = cnn_jax faster; per alternating pair p10 {pairs['p10']:.2f}, "
                 f"median {pairs['median']:.2f}, p90 {pairs['p90']:.2f})")
  return "\n".join(lines)


def run(model_name: str, *, mode: str = "train", vs_torch: bool = False,
        torch_python: str | None = None, steps: int = 20, warmup: int = 3,
        conv_impl: str = "auto", **kwargs: Any) -> dict[str, Any]:
  """The whole benchmark: `mode` in JAX; with `vs_torch`, train and infer in both frameworks,
  a few steps of each in turn, so that a change in the machine's load hits both alike.
  `conv_impl` is the training config's field of that name (cnn_jax/models/layers.py)."""
  from cnn_jax import train
  from cnn_jax.models import layers

  train.check_conv_impl(conv_impl)
  with layers.conv_impl(conv_impl):
    report = _run(model_name, mode=mode, vs_torch=vs_torch, torch_python=torch_python,
                  steps=steps, warmup=warmup, **kwargs)
  for result in report["jax"]:
    result["conv_impl"] = conv_impl
  return report


def _run(model_name: str, *, mode: str, vs_torch: bool, torch_python: str | None, steps: int,
         warmup: int, **kwargs: Any) -> dict[str, Any]:
  host = {"machine": platform.machine(), "cpus": os.cpu_count(),
          "load_avg_1m_start": os.getloadavg()[0]}
  if not vs_torch:
    result = benchmark_jax(model_name, mode=mode, steps=steps, warmup=warmup, **kwargs)
    host["load_avg_1m_end"] = os.getloadavg()[0]
    return {"jax": [result], "torch": None, "ratio_vs_torch": None,
            "ratio_vs_torch_per_pair": None, "host": host}
  if mode == "fcmae":
    raise UserError("--vs_torch compares the supervised train step and inference; "
                    "use --mode train or infer")
  if steps < 1 or warmup < 0:
    raise UserError(f"need steps >= 1 and warmup >= 0 (got {steps}, {warmup})")
  python = check_torch(torch_python)  # Before the slow JAX half.
  # One mode at a time, so that only one model state and program occupy memory.
  first = prepare_jax(model_name, mode="train", **kwargs)
  worker = TorchWorker(python, model_name, batch_size=first.batch_size,
                       image_size=first.image_size, in_channels=first.in_channels,
                       num_classes=first.num_classes, dtype=first.dtype)
  batch_size = first.batch_size
  results, torch_results, ratios, pair_ratios = [], {}, {}, {}
  try:
    for m in ("train", "infer"):
      step = first if m == "train" else prepare_jax(model_name, mode=m, **kwargs)
      jax_warm, jax_times, torch_warm, torch_times = _paired_times(
          step.run_step, worker, m, steps, warmup)
      results.append(step.finish(jax_warm, jax_times))
      stats = step_time_stats(torch_times)
      torch_results[m] = {**worker.meta, "mode": m, "steps": steps, "warmup": warmup,
                          "images_per_sec": batch_size / stats["median"],
                          "step_time_s": stats, "step_times_s": torch_times,
                          "warmup_times_s": torch_warm}
      ratios[m] = stats["median"] / results[-1]["step_time_s"]["median"]
      pair_ratios[m] = step_time_stats([t / j for t, j in zip(torch_times, jax_times)])
      del step
      first = None  # Drops the train state and program before the infer ones are built.
  finally:
    worker.close()
  host["load_avg_1m_end"] = os.getloadavg()[0]
  return {"jax": results, "torch": torch_results, "ratio_vs_torch": ratios,
          "ratio_vs_torch_per_pair": pair_ratios, "host": host}


# ----------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS
# cnn_jax.summary (reused for the FLOP count) defines flags of the same names at import;
# in this program this CLI's own take their place.
from cnn_jax import summary as _summary  # noqa: E402,F401
from cnn_jax.models import layers as _layers  # noqa: E402
for _name in ("model", "batch_size", "image_size", "num_classes", "dtype", "json"):
  if _name in FLAGS:
    delattr(FLAGS, _name)
flags.DEFINE_string("model", None, "Registered model name, e.g. resnet50, convnext_tiny.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (split over the devices).")
flags.DEFINE_integer("image_size", None, "Input side in pixels (default: the model's own).")
flags.DEFINE_enum("mode", "train", list(MODES), "What to time.")
flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Compute dtype (parameters stay float32).")
flags.DEFINE_integer("steps", 20, "Measured steps.")
flags.DEFINE_integer("warmup", 3, "Steps run before timing (after compilation).")
flags.DEFINE_integer("num_classes", None, "Classes of the head (default: the model's own).")
flags.DEFINE_integer("num_devices", -1, "Devices of the data-parallel mesh (-1 = all).")
flags.DEFINE_bool("with_data", False, "Feed every step from the synthetic input pipeline.")
flags.DEFINE_bool("vs_torch", False, "Also time train and inference in PyTorch eager; print "
                  "the ratios.")
flags.DEFINE_string("torch_python", None, "Python that has torch and timm, for --vs_torch "
                    "(default: this one).")
flags.DEFINE_float("peak_flops", None, "Peak FLOP/s of all devices together, for MFU "
                   "(default: table for GPUs/TPUs, measured matmul on CPU).")
flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
flags.DEFINE_enum("conv_impl", "auto", list(_layers.CONV_IMPLS), "How convolutions are "
                  "computed, as the training config's conv_impl (auto: CPU forms on CPU).")


def main(argv: Sequence[str]) -> None:
  try:
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.model:
      raise UserError("--model is required, e.g. --model resnet50")
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # JAX's INFO lines would interleave the table.
    report = run(FLAGS.model, mode=FLAGS.mode, vs_torch=FLAGS.vs_torch,
                 torch_python=FLAGS.torch_python, batch_size=FLAGS.batch_size,
                 image_size=FLAGS.image_size, dtype=FLAGS.dtype, steps=FLAGS.steps,
                 warmup=FLAGS.warmup, with_data=FLAGS.with_data,
                 num_devices=FLAGS.num_devices, num_classes=FLAGS.num_classes,
                 peak_flops=FLAGS.peak_flops, conv_impl=FLAGS.conv_impl)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(json.dumps(report) if FLAGS.json else format_report(report), flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
