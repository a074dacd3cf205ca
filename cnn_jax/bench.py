"""Speed of one model: images/s, step time, compile time, memory and MFU; optionally vs PyTorch.

  python -m cnn_jax.bench --model resnet50 --batch_size 32
  python -m cnn_jax.bench --model convnext_tiny --batch_size 32 --mode infer --json
  python -m cnn_jax.bench --model resnet50 --batch_size 32 --vs_torch \
      [--torch_python /path/to/venv_with_torch/bin/python]

The timed step is the training loop's own, built by its functions (`train.create_train_state`,
`train.jit_train_step` / `jit_eval_step`, the mode's `Task`), with the loop's shardings and
buffer donation: `--mode train` times `train.train_step` (forward, cross-entropy, backward, AdamW
update), `infer` `train.eval_step` (eval-mode forward), `fcmae` the FCMAE pre-training step. The
data are one synthetic batch placed on the devices once, so only the model is measured;
`--with_data` feeds every step from the synthetic grain pipeline, as the loop does.
Compilation is timed on its own; `--warmup` steps run before the timed ones, each of which ends
with `block_until_ready`.

MFU = model FLOPs per step / median step time / peak FLOP/s (cnn_jax/perf.py); a train step
counts 3 x the forward's FLOPs, the usual convention, so rematerialisation does not raise it.
XLA's own count of the compiled program is reported beside it (`xla_flops_per_step`).

`--vs_torch` also times train and inference of the same model (timm, else torchvision) in
PyTorch eager, in turns with JAX, in a process of `--torch_python` (cnn_jax/bench_torch.py), and
prints the ratios PyTorch time / cnn_jax time (> 1: cnn_jax is faster). On shared machines
absolute times drift; ratios from one run are the figure to compare.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

from absl import flags

from cnn_jax import bench_torch, cli
from cnn_jax.errors import UserError
from cnn_jax.timing import step_time_stats

MODES = ("train", "infer", "fcmae")
DTYPES = ("float32", "bfloat16", "float16")
# `--with_data`'s rounds of each kind: enough that one slow stretch of a shared host does not
# decide the fed-against-alone figure (`FeedCheck.measure`).
FEED_ROUNDS = 6

# ----------------------------------------------------------------------------- JAX side

def bench_config(model_name: str, *, batch_size: int, image_size: int, in_channels: int,
                 num_classes: int, model_kwargs: dict[str, Any], num_devices: int) -> Any:
  """A training config for the synthetic source at this size: what the timed steps are
  built from."""
  from cnn_jax import config as base_config

  config = base_config.get_config()
  config.model = {"name": model_name, **model_kwargs}
  config.data.update(dict(source="synthetic", name="synthetic", image_size=image_size,
                          channels=in_channels, batch_size=batch_size,
                          eval_batch_size=batch_size))
  if in_channels != 3:  # The ImageNet statistics are per RGB channel.
    config.data.mean, config.data.std = (0.5,) * in_channels, (0.5,) * in_channels
  # num_train: a few batches (the pipeline wraps around).
  config.data.synthetic.update(dict(num_classes=num_classes, num_train=batch_size * 4,
                                    num_eval=batch_size))
  config.mesh.num_devices = num_devices
  # AdamW at a constant rate, as the PyTorch side runs it.
  config.optimizer.name, config.schedule.name = "adamw", "constant"
  return config


def _build_model(task: Any, config: Any) -> tuple[Any, Any]:
  """(model, config): `task.build_model`, with `model.image_size` for the models whose
  constructor takes it (ViT)."""
  sized = config.copy_and_resolve_references()
  sized.model.image_size = config.data.image_size
  try:
    return task.build_model(sized), sized
  except UserError as e:
    if "unexpected keyword argument 'image_size'" not in str(e):
      raise
  return task.build_model(config), config


@dataclasses.dataclass
class FeedCheck:
  """Whether the input pipeline keeps up with the step (`--with_data`): steps run back to
  back as the loop runs them (one wait at the end, so host work may overlap the step) on the
  fixed batch, on the pipeline's batches, and the pipeline's batches (as the loop hands them
  to the step, `parallel.feed_batch`) with no step. Each callable does one unit and returns
  what to wait on."""
  step_alone: Callable[[], Any]
  step_with_data: Callable[[], Any]
  pipeline_alone: Callable[[], Any]
  # A twin of step_with_data on its own pass over the pipeline, whose batches go to the step
  # through `put(batch, mesh)` instead of `parallel.feed_batch` (experiments compare feeds).
  step_fed_by: Callable[[Callable[..., Any]], Callable[[], Any]]

  def measure(self, steps: int, rounds: int = FEED_ROUNDS) -> dict[str, Any]:
    """Seconds per unit of each kind, `rounds` rounds taken in turns, in order and reverse
    order (machine load drifts), step_with_data / step_alone of the totals, and the median of
    that ratio within each round, which one slow stretch of a shared host does not move
    (experiments/cpu_speed/, stop 42)."""
    import statistics

    import jax

    kinds = ("step_alone", "step_with_data", "pipeline_alone")
    per_round: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, float] = {kind: 0.0 for kind in kinds}
    for round_ in range(rounds):
      for kind in (kinds if round_ % 2 == 0 else kinds[::-1]):
        unit = getattr(self, kind)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
          out = unit()
        jax.block_until_ready(out)  # The steps chain through the state; copies go in order.
        per_round[kind].append((time.perf_counter() - start) / steps)
        cpu[kind] += (time.process_time() - start_cpu) / steps / rounds
    mean = {kind: sum(times) / len(times) for kind, times in per_round.items()}
    round_ratios = [fed / alone for fed, alone in zip(per_round["step_with_data"],
                                                      per_round["step_alone"])]
    # CPU seconds of this process (every thread: XLA's, the pipeline's) per unit: the figure
    # that holds on a shared machine.
    return {"steps_per_round": steps, "rounds": rounds, "seconds_per_round": per_round,
            **{f"{kind}_s": mean[kind] for kind in kinds},
            **{f"{kind}_cpu_s": cpu[kind] for kind in kinds},
            "with_data_vs_alone": mean["step_with_data"] / mean["step_alone"],
            "with_data_vs_alone_round_median": statistics.median(round_ratios),
            "pipeline_faster": mean["pipeline_alone"] < mean["step_alone"]}


@dataclasses.dataclass
class PreparedStep:
  """A compiled step and the figures known before it runs (`fields`: the sizes, FLOPs and
  compile times of `benchmark_jax`'s result)."""
  run_step: Callable[[], Any]  # One step; returns its outputs, not yet ready.
  compiled: Any
  devices: list[Any]
  fields: dict[str, Any]
  peak_flops: float | None
  feed: FeedCheck | None = None  # With `with_data`.

  def time_steps(self, count: int) -> list[float]:
    import jax

    times = []
    for _ in range(count):
      start = time.perf_counter()
      jax.block_until_ready(self.run_step())
      times.append(time.perf_counter() - start)
    return times

  def result(self, warm_times: list[float], times: list[float]) -> dict[str, Any]:
    """`benchmark_jax`'s result dict from measured step times."""
    import jax

    from cnn_jax import perf

    stats = step_time_stats(times)
    peak, peak_source = perf.peak_flops(self.devices, self.fields["dtype"], self.peak_flops)
    model_flops = self.fields["model_flops_per_step"]
    return {
        **self.fields, "steps": len(times), "warmup": len(warm_times),
        "images_per_sec": self.fields["batch_size"] / stats["median"],
        "step_time_s": stats, "step_times_s": times, "warmup_times_s": warm_times,
        "xla_flops_per_step": perf.xla_flops(self.compiled),
        "peak_flops": peak, "peak_flops_source": peak_source,
        "mfu": model_flops / stats["median"] / peak if peak else None,
        "platform": self.devices[0].platform, "device_kind": self.devices[0].device_kind,
        "num_devices": len(self.devices),
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "jax_version": jax.__version__,
        "backend_env": {k: os.environ[k] for k in ("XLA_FLAGS", "JAX_PLATFORMS",
                                                   "GLIBC_TUNABLES") if k in os.environ},
        **perf.memory_figures(self.compiled, self.devices),
    }


def prepare_jax(model_name: str, *, mode: str = "train", batch_size: int = 64,
                image_size: int | None = None, dtype: str = "float32",
                with_data: bool = False, num_devices: int = -1, num_classes: int | None = None,
                peak_flops: float | None = None, model_kwargs: dict[str, Any] | None = None,
                config: Any = None) -> PreparedStep:
  """Builds and compiles the step of `mode` as the training loop does, on one batch of the
  synthetic source (or, `with_data`, on its pipeline).

  config: a training config whose model, optimizer, schedule and data (source, batch size,
  image size, devices) replace `model_name`, the sizes, `dtype` and the synthetic source, so
  that the step timed is the one `python -m cnn_jax.main` runs with it."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from cnn_jax import data, fcmae, hostenv, parallel, perf, summary, train

  if mode not in MODES or dtype not in DTYPES or batch_size < 1:
    raise UserError(f"need a mode of {MODES}, a dtype of {DTYPES} and batch_size >= 1 "
                    f"(got {mode!r}, {dtype!r}, {batch_size})")
  if config is not None:
    model_kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    model_name, batch_size = config.model.name, config.data.batch_size
    image_size, dtype = config.data.image_size, str(jnp.dtype(model_kwargs.get("dtype",
                                                                               "float32")))
    model_kwargs.pop("image_size", None)  # `image_size` above: summarize passes it on
  model_kwargs = dict(model_kwargs or {})
  model_options = dict(model_kwargs)  # As given, for the report.
  if dtype != "float32" and config is None:
    model_kwargs["dtype"] = jnp.dtype(dtype)
  if num_classes is not None:
    model_kwargs["num_classes"] = num_classes
  # Resolves the model's default size, channels and classes, and counts its FLOPs.
  info = summary.summarize(model_name, image_size=image_size, batch_size=batch_size,
                           **model_kwargs)
  image_size, in_channels = info["image_size"], info["in_channels"]
  num_classes, forward_flops = info["num_classes"], info["batch"]["flops"]

  if config is None:
    config = bench_config(model_name, batch_size=batch_size, image_size=image_size,
                          in_channels=in_channels, num_classes=num_classes,
                          model_kwargs=model_kwargs, num_devices=num_devices)
  else:  # A config file's is locked; `_build_model` and the fcmae mode add fields.
    config = config.copy_and_resolve_references()
    config.unlock()
    if mode == "infer":  # The eval step takes whole images, as `evaluate`'s batches are.
      config.data.crop_on_device = False
  mesh = parallel.create_mesh(config)
  parallel.check_batch_divisible(batch_size, mesh, "--batch_size")
  if mode == "fcmae":
    # The mask patch is the encoder's total stride: one patch per final feature position.
    encoder = nnx.eval_shape(lambda: train.build_model(config))
    config.fcmae.patch_size = getattr(encoder, "total_stride", config.fcmae.patch_size)
  task = fcmae.make_task(config) if mode == "fcmae" else train.CLASSIFICATION
  model, config = _build_model(task, config)
  input_shape = (batch_size, image_size, image_size, in_channels)
  train.check_input_shape(model, batch_size, input_shape[1:])
  train_graphdef, eval_graphdef, params, model_state = train.split_model(model)
  if mode == "fcmae":  # The encoder's count has a head and no decoder.
    forward_flops = perf.forward_flops(eval_graphdef, params, model_state, input_shape)

  train_batches, _, data_info = data.create_datasets(config)
  # The loop's schedule, so a config's step is its run's (the synthetic config's is constant).
  _, schedule = train.run_schedule(config, train_batches.steps_per_epoch)
  # Inference keeps no optimizer state (identity's is empty), so it does not take memory.
  tx = (optax.identity() if mode == "infer"
        else train.build_optimizer(config, schedule, model, params))
  state = train.create_train_state(config, params, model_state, tx)
  state_shardings = parallel.state_sharding(state, mesh, config.mesh.strategy,
                                            config.mesh.fsdp_min_size)
  state = parallel.put_state(state, state_shardings)
  if mode == "infer":
    step_fn = train.jit_eval_step(task, mesh, eval_graphdef, state_shardings,
                                  hostenv.forward_compiler_options(model))
  else:
    step_fn = train.jit_train_step(task, config, data_info, mesh, train_graphdef, tx,
                                   schedule, state_shardings)

  def host_batch(batch: dict[str, Any]) -> dict[str, Any]:
    if mode == "infer":  # eval_step sums over the valid rows: here every row is.
      batch = {**batch, "mask": np.ones(batch["label"].shape, np.float32)}
    return batch

  def batches_put_by(put: Callable[..., Any]) -> Any:
    return data.prefetch_to_device(train_batches.iterate(0),
                                   lambda b: put(host_batch(b), mesh),
                                   config.data.prefetch_to_device)

  fixed = parallel.shard_batch(host_batch(train_batches.batch(0)), mesh)
  # The train step's third argument (`train.jit_train_step`); the eval step has none.
  resident = () if mode == "infer" else (
      jax.device_put(train_batches.resident(), parallel.replicated(mesh)),)
  if with_data:  # Fed as the loop feeds its steps (`parallel.feed_batch`), a few batches ahead.
    batches = batches_put_by(parallel.feed_batch)
    next_batch = lambda: next(batches)  # noqa: E731
  else:
    next_batch = lambda: fixed  # noqa: E731

  example = fixed
  # The train step takes the state's leaves, as the loop calls it (train.jit_train_step).
  step_state = state if mode == "infer" else jax.tree.leaves(state)
  start = time.perf_counter()
  lowered = step_fn.lower(step_state, example, *resident)
  lower_s, start = time.perf_counter() - start, time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  holder = {"state": step_state}

  def step_on(batch: Any) -> Any:
    if mode == "infer":
      return compiled(holder["state"], batch)
    holder["state"], out = compiled(holder["state"], batch, *resident)
    return out

  def run_step() -> Any:
    return step_on(next_batch())

  def step_fed_by(put: Callable[..., Any]) -> Callable[[], Any]:
    put_batches = batches_put_by(put)
    return lambda: step_on(next(put_batches))

  fields = {"framework": "jax", "model": model_name, "model_options": model_options,
            "mode": mode, "batch_size": batch_size,
            "image_size": image_size, "in_channels": in_channels, "num_classes": num_classes,
            "dtype": dtype, "with_data": with_data, "lower_time_s": lower_s,
            "compile_time_s": compile_s, "forward_flops_per_step": forward_flops,
            "model_flops_per_step": forward_flops if mode == "infer" else 3 * forward_flops}
  feed = (FeedCheck(step_alone=lambda: step_on(fixed), step_with_data=run_step,
                    pipeline_alone=next_batch, step_fed_by=step_fed_by) if with_data else None)
  return PreparedStep(run_step, compiled, list(mesh.devices.flat), fields, peak_flops, feed)


def benchmark_jax(model_name: str, *, steps: int = 20, warmup: int = 3,
                  feed_rounds: int = FEED_ROUNDS, **kwargs: Any) -> dict[str, Any]:
  """Times `mode` for one model in JAX; returns every figure as a JSON-serialisable dict.

  feed_rounds: rounds of each kind of `FeedCheck.measure` (with `with_data`).
  kwargs: those of `prepare_jax`."""
  if steps < 1 or warmup < 0 or feed_rounds < 1:
    raise UserError(f"need steps >= 1, warmup >= 0 and feed_rounds >= 1 (got {steps}, "
                    f"{warmup}, {feed_rounds})")
  prepared = prepare_jax(model_name, **kwargs)
  warm_times = prepared.time_steps(warmup)
  result = prepared.result(warm_times, prepared.time_steps(steps))
  if prepared.feed is not None:
    result["feed"] = prepared.feed.measure(steps, feed_rounds)
  return result


def run(model_name: str, *, mode: str = "train", vs_torch: bool = False,
        torch_python: str | None = None, torch_model: str | None = None,
        torch_options: dict[str, Any] | None = None, steps: int = 20, warmup: int = 3,
        conv_impl: str = "auto", feed_rounds: int = FEED_ROUNDS, **kwargs: Any
        ) -> dict[str, Any]:
  """The whole benchmark: `mode` in JAX; with `vs_torch`, train and infer in both frameworks,
  the PyTorch side `torch_model` (default: `model_name`) built with `torch_options`
  (bench_torch.create_model). `conv_impl` is the training config's field of that name
  (cnn_jax/models/layers.py); kwargs: those of `prepare_jax`."""
  from cnn_jax import train
  from cnn_jax.models import layers

  train.check_conv_impl(conv_impl)
  if vs_torch and mode == "fcmae":
    raise UserError("--vs_torch compares the supervised train step and inference; "
                    "use --mode train or infer")
  python = bench_torch.check_torch(torch_python) if vs_torch else None  # Before the JAX half.
  host = {"machine": platform.machine(), "cpus": os.cpu_count(),
          "load_avg_1m_start": os.getloadavg()[0]}
  with layers.conv_impl(conv_impl):
    if vs_torch:
      report = bench_torch.compare(functools.partial(prepare_jax, model_name, **kwargs),
                                   python, torch_model or model_name, steps, warmup,
                                   options=torch_options)
    else:
      report = {"jax": [benchmark_jax(model_name, mode=mode, steps=steps, warmup=warmup,
                                      feed_rounds=feed_rounds, **kwargs)],
                "torch": None, "ratio_vs_torch": None, "ratio_vs_torch_per_pair": None}
  for result in report["jax"]:
    result["conv_impl"] = conv_impl
  host["load_avg_1m_end"] = os.getloadavg()[0]
  return {**report, "host": host}


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
    if r.get("feed"):
      f = r["feed"]
      lines.append(
          f"  input pipeline  steps back to back: {f['step_alone_s'] * 1e3:.1f} ms alone, "
          f"{f['step_with_data_s'] * 1e3:.1f} ms fed by the pipeline "
          f"({100 * (f['with_data_vs_alone'] - 1):+.1f} %, median of the rounds "
          f"{100 * (f['with_data_vs_alone_round_median'] - 1):+.1f} %); the pipeline alone "
          f"{f['pipeline_alone_s'] * 1e3:.1f} ms/batch ({f['rounds']} rounds of "
          f"{f['steps_per_round']}); CPU {f['step_alone_cpu_s'] * 1e3:.1f}, "
          f"{f['step_with_data_cpu_s'] * 1e3:.1f}, {f['pipeline_alone_cpu_s'] * 1e3:.1f} ms")
  lines += bench_torch.report_lines(report)
  return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS
# The flags passed to `run` under their own names.
RUN_FLAGS = ("mode", "vs_torch", "torch_python", "torch_model", "batch_size", "image_size",
             "dtype", "steps", "warmup", "with_data", "num_devices", "num_classes", "peak_flops",
             "conv_impl", "feed_rounds")


def define_flags() -> None:
  from cnn_jax.models import layers

  flags.DEFINE_string("model", None, "Registered model name, e.g. resnet50, convnext_tiny.")
  cli.define_config_flag("config", "A training config (configs/X.py[:arg], --config.a.b=v "
                         "overrides): time the step `python -m cnn_jax.main` runs with it, on "
                         "its data; replaces --model, --batch_size, --image_size, --dtype, "
                         "--num_classes, --num_devices and --conv_impl.")
  flags.DEFINE_integer("batch_size", 64, "Global batch size (split over the devices).")
  flags.DEFINE_integer("image_size", None, "Input side in pixels (default: the model's own).")
  flags.DEFINE_enum("mode", "train", list(MODES), "What to time.")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Compute dtype (parameters stay float32).")
  flags.DEFINE_integer("steps", 20, "Measured steps.")
  flags.DEFINE_integer("warmup", 3, "Steps run before timing (after compilation).")
  flags.DEFINE_integer("num_classes", None, "Classes of the head (default: the model's own).")
  flags.DEFINE_integer("num_devices", -1, "Devices of the data-parallel mesh (-1 = all).")
  flags.DEFINE_bool("with_data", False, "Feed every step from the synthetic input pipeline.")
  flags.DEFINE_integer("feed_rounds", FEED_ROUNDS, "With --with_data: rounds of --steps units "
                       "of each kind (alone, fed, pipeline alone), taken in turns.")
  flags.DEFINE_bool("vs_torch", False, "Also time train and infer in PyTorch; print the ratios.")
  flags.DEFINE_string("model_options", None, "JSON object of the model's constructor options, "
                      'e.g. \'{"patch_size": 1}\' (as --config.model.* in training).')
  flags.DEFINE_string("torch_model", None, "PyTorch model for --vs_torch when its name is not "
                      "--model's: timm's or torchvision's, or one of bench_torch.small_models "
                      "(e.g. resnet_micro for the long-range experiment's).")
  flags.DEFINE_string("torch_options", None, "JSON object of keyword arguments for the PyTorch "
                      "model (timm's create_model), e.g. '{\"patch_size\": 1}'.")
  flags.DEFINE_string("torch_python", None, "Python that has torch and timm, for --vs_torch "
                      "(default: this one).")
  flags.DEFINE_float("peak_flops", None, "Peak FLOP/s of all devices together, for MFU "
                     "(default: table for GPUs/TPUs, measured matmul on CPU).")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
  flags.DEFINE_enum("conv_impl", "auto", list(layers.CONV_IMPLS), "How convolutions are "
                    "computed, as the training config's conv_impl (auto: CPU forms on CPU).")


def _json_object(flag: str) -> dict[str, Any]:
  """The JSON object given to --flag ({} if none)."""
  text = FLAGS[flag].value
  try:
    value = json.loads(text) if text else {}
  except json.JSONDecodeError as e:
    raise UserError(f"--{flag} is not valid JSON ({e}): {text!r}") from None
  if not isinstance(value, dict):
    raise UserError(f"--{flag} must be a JSON object like '{{\"patch_size\": 1}}' "
                    f"(got {text!r})")
  return value


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  kwargs = {name: FLAGS[name].value for name in RUN_FLAGS}
  model = FLAGS.model
  if FLAGS["config"].present:
    kwargs["config"] = cli.config_value("config", "configs/lenet5_mnist.py")
    model, kwargs["conv_impl"] = kwargs["config"].model.name, kwargs["config"].conv_impl
  elif not model:
    raise UserError("--model is required (or --config), e.g. --model resnet50")
  report = run(model, model_kwargs=_json_object("model_options"),
               torch_options=_json_object("torch_options"), **kwargs)
  print(json.dumps(report) if FLAGS.json else format_report(report), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
