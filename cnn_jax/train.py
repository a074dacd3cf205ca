"""Supervised training: TrainState, train_step, eval_step, train_and_evaluate.

Plain functions. The model is split once into a graph definition (static) and its state
(arrays); the jitted steps take and return only arrays, sharded over the device mesh, with
the train state's buffers donated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from cnn_jax import (checkpoint, data, hostenv, metrics, optim, parallel, timing,
                     workdir_lock)
from cnn_jax.errors import UserError
from cnn_jax.models import layers, onednn, registry


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State       # nnx.Param variables: what the optimizer updates.
  model_state: nnx.State  # Everything else: BatchNorm statistics, RNG streams.
  opt_state: optax.OptState
  ema_params: nnx.State | None = None  # Present when config.ema_decay > 0.


def build_model(config: ml_collections.ConfigDict, *, weights_to_load: bool = False,
                fresh: tuple[str, ...] = ()) -> nnx.Module:
  """The model named by `config.model.name`; every other field of `config.model` is a kwarg
  (lists, as a run's config.json gives them back, as tuples). weights_to_load: its Params and
  BatchStats are placeholders for a checkpoint's, but those under `fresh` (`registry.build`)."""
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in config.model.to_dict().items() if k != "name"}
  rngs = nnx.Rngs(config.seed, params=config.seed, dropout=config.seed + 1)
  name = config.model.name
  return registry.build(name, registry.get_constructor(name), rngs, kwargs,
                        weights_to_load=weights_to_load, fresh=fresh)


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run wrote to WORKDIR/config.json."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{workdir} is not a training workdir (no config.json)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, *, ema: bool = False, best: bool = True
             ) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """(model, config) of a training run: its config.json's model in eval mode with a
  checkpoint's parameters (`ema`: their EMA) and BatchNorm statistics: the best checkpoint when
  `best` and the run kept one, else the latest (`checkpoint.read_run_weights`)."""
  config = read_run_config(workdir)
  if config.model.get("attention_impl") == "cudnn" and jax.default_backend() != "gpu":
    # How a run on a GPU computed its attention, not what it learned: loaded elsewhere (predict,
    # erf), the same function by this process's own attention.
    config.model.attention_impl = "auto"
  model = build_model(config, weights_to_load=True)
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  best_by = ((config.checkpoint.best_metric, config.checkpoint.best_mode)
             if best and config.checkpoint.get("best_metric") else None)
  _, saved_params, saved_state = checkpoint.read_run_weights(workdir, ema, best_by)
  stats = checkpoint.batch_stat_names(rest)
  saved_stats = {k: v for k, v in saved_state.items() if k in stats}
  name = config.model.name
  params, rest = checkpoint.apply_pretrained(params, rest, {"model": name}, saved_params,
                                             saved_stats, "keep", f"{workdir} ({name})")
  return nnx.merge(graphdef, params, rest), config


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.GraphDef, nnx.State, nnx.State]:
  """(train graphdef, eval graphdef, params, model_state): modes live in the graphdef."""
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  train_graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return train_graphdef, eval_graphdef, params, model_state


def check_input_shape(model: nnx.Module, batch_size: int, image_shape: tuple[int, ...]) -> None:
  """Fails early, with the model's own reason, on an image size the model cannot take."""
  graphdef, model_state = nnx.split(model)

  def forward(model_state, images):
    return nnx.merge(graphdef, model_state)(images)

  try:
    # XLA's ops: under "auto" the CPU's conv autotune would time every conv at this batch size,
    # which in a run of many processes is no step's, only to check shapes.
    with layers.conv_impl("xla"):
      jax.eval_shape(forward, model_state,
                     jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32))
  except (ValueError, TypeError) as e:
    raise UserError(f"the model cannot take images of shape {tuple(image_shape)}: "
                    f"{str(e).splitlines()[0]}") from None


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               label_smoothing: float, mixup: ml_collections.ConfigDict | None = None,
               num_classes: int = 0, seed: int = 0, ema_decay: float = 0.0,
               grad_accum_steps: int = 1,
               image_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  images, targets = batch["image"], None
  if images.dtype == jnp.uint8:  # data.normalise_on_device: (mean, std) in image_stats.
    rng = jax.random.fold_in(jax.random.key(seed + 1), state.step)
    images = data.mixing.normalise_on_device(images, batch.get("erase_box"), rng, *image_stats)
  if mixup is not None:  # Mixup/cutmix on the global batch: soft (smoothed) targets.
    onehot = jax.nn.one_hot(batch["label"], num_classes)
    if label_smoothing:
      onehot = optax.smooth_labels(onehot, label_smoothing)
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    images, targets = data.mixing.mix(images, onehot, rng, mixup)

  def loss_fn(params):
    # copy=True: merge would otherwise reuse the Variables of `state.model_state`, created
    # outside this grad trace, and BatchNorm's in-place statistics update would be refused.
    model = nnx.merge(graphdef, params, state.model_state, copy=True)
    logits = model(images)
    if targets is None:
      loss = cross_entropy(logits, batch["label"], logits.shape[-1], label_smoothing).mean()
    else:
      loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
    return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

  (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  step_metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "learning_rate": schedule(state.step // grad_accum_steps),
      "grad_norm": optax.global_norm(grads),
  }
  return apply_gradients(state, grads, model_state, tx=tx, ema_decay=ema_decay), step_metrics


def apply_gradients(state: TrainState, grads: nnx.State, model_state: nnx.State, *,
                    tx: optax.GradientTransformation, ema_decay: float) -> TrainState:
  """One optimizer update (and EMA update): the part every task's train step shares."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:
    ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - ema_decay)
  return state.replace(step=state.step + 1, params=params, model_state=model_state,
                       opt_state=opt_state, ema_params=ema_params)


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              graphdef: nnx.GraphDef) -> dict[str, jax.Array]:
  """Sums (not means) over the valid rows, so padded batches and many batches add up.

  With an EMA, the EMA parameters are evaluated too (keys prefixed `ema_`)."""
  def sums(params):
    model = nnx.merge(graphdef, params, state.model_state)
    logits = model(batch["image"])
    mask = batch["mask"]
    loss = cross_entropy(logits, batch["label"], logits.shape[-1])
    correct = jnp.argmax(logits, -1) == batch["label"]
    top_k = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    correct_top5 = jnp.any(top_k == batch["label"][:, None], axis=-1)
    return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
            "correct_top5": jnp.sum(correct_top5 * mask),
            "count": jnp.sum(mask)}

  out = sums(state.params)
  if state.ema_params is not None:
    out.update({f"ema_{k}": v for k, v in sums(state.ema_params).items()})
  return out


def evaluate(eval_fn: Callable[..., Any], state: TrainState, eval_batches: data.EvalBatches,
             mesh: jax.sharding.Mesh,
             summarize: Callable[[dict[str, Any]], dict[str, float]] | None = None
             ) -> dict[str, float]:
  """Sums `eval_fn`'s outputs over the eval split, then `summarize`s them (default:
  classification loss and accuracy)."""
  totals = None
  for batch in eval_batches:
    out = eval_fn(state, parallel.feed_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  return (summarize or classification_metrics)(jax.device_get(totals))


def classification_metrics(totals: dict[str, Any]) -> dict[str, float]:
  results = {}
  for prefix in ("", "ema_"):
    if f"{prefix}count" in totals:
      count = float(totals[f"{prefix}count"])
      results[f"{prefix}loss"] = float(totals[f"{prefix}loss_sum"]) / count
      results[f"{prefix}accuracy"] = float(totals[f"{prefix}correct"]) / count
      if f"{prefix}correct_top5" in totals:
        results[f"{prefix}top5_accuracy"] = float(totals[f"{prefix}correct_top5"]) / count
  return results


def run_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int
                 ) -> tuple[int, optax.Schedule]:
  """The run's length in steps and its learning-rate schedule, which counts optimizer updates
  (one per `optimizer.grad_accum_steps` steps)."""
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  accum = config.optimizer.grad_accum_steps
  return total_steps, optim.create_schedule(config, total_steps // accum,
                                            steps_per_epoch // accum)


def classification_step_options(config: ml_collections.ConfigDict,
                                info: data.DatasetInfo) -> dict[str, Any]:
  mixup = config.data.mixup if data.mixing.is_active(config.data.mixup) else None
  return dict(label_smoothing=config.label_smoothing, mixup=mixup,
              num_classes=info.num_classes, seed=config.seed, ema_decay=config.ema_decay,
              grad_accum_steps=config.optimizer.grad_accum_steps,
              image_stats=((tuple(config.data.mean), tuple(config.data.std))
                           if config.data.normalise_on_device else None))


@dataclasses.dataclass(frozen=True)
class Task:
  """What a run optimises; `train_and_evaluate` supplies the loop (mesh, data, optimizer,
  checkpoints, logging) around it.

  train_step(state, batch, *, graphdef, tx, schedule, **step_options(config, info)) and
  eval_step(state, batch, *, graphdef) -> sums over the batch's valid rows, which
  summarize_eval turns into metrics. make_step_hook, if set, is called once with keyword
  arguments (config, workdir, mesh, eval_graphdef, eval_batches, writer) and returns
  hook(step, state, force), run after every step (FCMAE writes reconstructions with it).
  """
  build_model: Callable[[ml_collections.ConfigDict], nnx.Module]
  train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  step_options: Callable[[ml_collections.ConfigDict, data.DatasetInfo], dict[str, Any]]
  eval_step: Callable[..., dict[str, jax.Array]]
  summarize_eval: Callable[[dict[str, Any]], dict[str, float]]
  make_step_hook: Callable[..., Callable[[int, TrainState, bool], None]] | None = None
  # build_model with placeholders for the weights `init_from` loads, all but those under the
  # given paths (build_model's weights_to_load); None: the task builds every weight first.
  build_model_for_weights: Callable[[ml_collections.ConfigDict, tuple[str, ...]],
                                    nnx.Module] | None = None
  # Names summarize_eval returns without the "ema_" twins (checked against the config's
  # checkpoint.best_metric before anything runs).
  eval_metric_names: tuple[str, ...] = ("loss", "accuracy", "top5_accuracy")


CLASSIFICATION = Task(
    build_model=build_model, train_step=train_step, step_options=classification_step_options,
    eval_step=eval_step, summarize_eval=classification_metrics,
    build_model_for_weights=lambda config, fresh: build_model(config, weights_to_load=True,
                                                              fresh=fresh))


def _build_for_init_from(task: Task, config: ml_collections.ConfigDict,
                         pretrained: tuple[dict[str, Any], Any, Any] | None) -> nnx.Module:
  """task.build_model(config), drawing no weight that `pretrained` (read_pretrained's) replaces:
  with init_head=drop only the classifier is drawn."""
  if pretrained is not None and task.build_model_for_weights is not None:
    fresh = tuple(pretrained[0].get("head", ())) if config.init_head == "drop" else ()
    if config.init_head == "keep" or fresh:
      return task.build_model_for_weights(config, fresh)
  return task.build_model(config)


def build_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                    model: nnx.Module, params: nnx.State) -> optax.GradientTransformation:
  """`optim.create_optimizer` with the model's layer ids, for `optimizer.layer_decay`."""
  return optim.create_optimizer(config, schedule, params=params,
                                layer_id=getattr(model, "lr_layer_id", None),
                                num_layers=getattr(model, "lr_num_layers", None))


def create_train_state(config: ml_collections.ConfigDict, params: nnx.State,
                       model_state: nnx.State, tx: optax.GradientTransformation) -> TrainState:
  """The state at step 0; also traced under `jax.eval_shape` to size a run without
  allocating it (experiments/fsdp_memory)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay else None)


def jit_train_step(task: Task, config: ml_collections.ConfigDict, info: data.DatasetInfo,
                   mesh: jax.sharding.Mesh, graphdef: nnx.GraphDef,
                   tx: optax.GradientTransformation, schedule: optax.Schedule,
                   state_shardings: Any) -> Callable[..., tuple[list[jax.Array], dict[str, Any]]]:
  """The loop's train step on the state's leaves: `(jax.tree.leaves(state), batch, resident)`
  -> (the new state's leaves, metrics); `jax.tree.unflatten(jax.tree.structure(state), leaves)`
  is the state. The leaves sharded per `state_shardings` and donated, the batch split over the
  `data` axis, `resident` (the train batches' `resident()`, `{}` for most sources) replicated,
  the metrics replicated. A `data.crop_on_device` batch gets its images cut from `resident`
  before the task's step sees it.

  Leaves, not the TrainState: jit flattens its arguments and results at every call, and a
  TrainState's nnx Variables flatten in Python, a list of arrays in C++: host time that a
  small model's step, or a small batch's, waits on (experiments/cpu_speed/, stop 31)."""
  state_def = jax.tree.structure(state_shardings)
  step = functools.partial(task.train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                           **task.step_options(config, info))

  # Its name is what compile logs and profiles show.
  def train_step_on_leaves(leaves: list[jax.Array], batch: dict[str, jax.Array],
                           resident: dict[str, jax.Array]
                           ) -> tuple[list[jax.Array], dict[str, Any]]:
    if "crop_index" in batch:
      batch = data.mixing.cut_crops(batch, resident["crop_source"], info.image_shape)
    state, step_metrics = step(jax.tree.unflatten(state_def, leaves), batch)
    return jax.tree.leaves(state), step_metrics

  leaf_shardings = jax.tree.leaves(state_shardings)
  return jax.jit(train_step_on_leaves,
                 in_shardings=(leaf_shardings, parallel.batch_sharding(mesh),
                               parallel.replicated(mesh)),
                 out_shardings=(leaf_shardings, parallel.replicated(mesh)), donate_argnums=(0,))


def jit_eval_step(task: Task, mesh: jax.sharding.Mesh, graphdef: nnx.GraphDef,
                  state_shardings: Any, compiler_options: dict[str, str] | None = None
                  ) -> Callable[..., dict[str, Any]]:
  """The loop's eval step: state as in training, batch split over `data`, sums replicated.
  `compiler_options`: `hostenv.forward_compiler_options(model)`."""
  return jax.jit(functools.partial(task.eval_step, graphdef=graphdef),
                 in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh), compiler_options=compiler_options)


def _prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    # A probe of its own per process (and thread): the processes of one run start together,
    # and a shared name was removed by one while another still used it.
    probe = os.path.join(workdir, f".write_test.{socket.gethostname()}.{os.getpid()}."
                                  f"{threading.get_ident()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir!r}: {e.strerror or e}") from None


# Fields that steer one invocation, not what the run trains: a resume that changes only them
# has not changed the run's config.
INVOCATION_FIELDS = ("halt_after_steps",)


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
  """The fields two configs (as written to config.json) differ in, as "field: old -> new",
  leaving out INVOCATION_FIELDS."""
  old = flax.traverse_util.flatten_dict(before, sep=".")
  new = flax.traverse_util.flatten_dict(after, sep=".")
  return [f"{k}: {old.get(k, '(none)')!r} -> {new.get(k, '(none)')!r}"
          for k in sorted(old.keys() | new.keys())
          if old.get(k) != new.get(k) and k not in INVOCATION_FIELDS]


def _write_config(workdir: str, config: ml_collections.ConfigDict, start_step: int) -> None:
  """`config.json`, which predict, erf and convert read beside the checkpoints. Written once
  the run has restored or built its state: a rerun refused before that (a model the checkpoint
  does not fit, an override typo caught late) leaves the finished run's config.json as it was.
  A resume with other overrides says what changed and keeps the config it replaces, so the
  record of how the checkpoints so far were trained is not lost."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if start_step and os.path.exists(path):
    with open(path) as f:
      before = f.read()
    changes = config_changes(json.loads(before), json.loads(text))
    if changes:
      kept = os.path.join(workdir, f"config.before_step_{start_step}.json")
      with open(kept, "w") as f:
        f.write(before)
      print(f"resumed with a changed config ({'; '.join(changes)}); the one it replaces is "
            f"kept in {kept}", flush=True)
  with open(path, "w") as f:
    f.write(text)


class _TerminationSignal:
  """Turns SIGTERM (preemption) and SIGINT into a stop the loop checks once per step, so the
  run saves a checkpoint and exits cleanly instead of dying mid-step.

  One process: a Python handler sets a flag. Several processes: the signal reaches them at
  different steps, or only one of them, yet all must save the same step. There SIGTERM is left
  to the handler that jax.distributed.initialize installs (the preemption notifier of XLA's
  coordination service; a Python handler would replace it), the notice is shared through the
  coordination service, and `multihost_utils.reached_preemption_sync_point(step)` turns true
  at one step on every process: the fastest process's step at the notice, plus one. SIGINT is
  forwarded to that handler as SIGTERM. The check is a local flag compare, no host round-trip.
  """

  def __init__(self, start_step: int):
    self.received: str | None = None
    self._previous = {}
    self._mode = "synced" if jax.process_count() > 1 else "local"
    if self._mode == "synced":
      try:  # The sync point counts from the last step reported; report the resume step.
        multihost_utils.reached_preemption_sync_point(start_step)
      except RuntimeError:  # jax_enable_preemption_service=False: no agreed step to stop at.
        logging.warning("jax's preemption service is off: SIGTERM kills the processes, and a "
                        "rerun resumes from the last periodic checkpoint")
        self._mode = "off"

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def _forward_to_sigterm(self, signum, frame):
    del signum, frame
    os.kill(os.getpid(), signal.SIGTERM)

  def __enter__(self):
    handlers = {"local": {signal.SIGTERM: self._handle, signal.SIGINT: self._handle},
                "synced": {signal.SIGINT: self._forward_to_sigterm}, "off": {}}[self._mode]
    if threading.current_thread() is threading.main_thread():
      for sig, handler in handlers.items():
        self._previous[sig] = signal.signal(sig, handler)
    return self

  def stop_reason(self, step: int) -> str | None:
    """Why to save and stop after `step` (None: go on); the same step on every process."""
    if self._mode == "synced":
      if multihost_utils.reached_preemption_sync_point(step):
        return f"SIGTERM or SIGINT on one of the {jax.process_count()} processes"
      return None
    return f"received {self.received}" if self.received else None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def _check_best_metric(config: ml_collections.ConfigDict, task: Task) -> None:
  metric = config.checkpoint.best_metric
  if not metric:
    return
  names = list(task.eval_metric_names)
  if config.ema_decay:
    names += [f"ema_{n}" for n in task.eval_metric_names]
  if metric not in names:
    raise UserError(f"checkpoint.best_metric {metric!r} is not an eval metric of this run; "
                    f"choose from {', '.join(names)} or '' (off)")
  if config.checkpoint.best_mode not in checkpoint.BEST_MODES:
    raise UserError(f"checkpoint.best_mode must be one of {checkpoint.BEST_MODES} "
                    f"(got {config.checkpoint.best_mode!r})")


def check_conv_impl(impl: str) -> None:
  """A conv impl that `layers.conv_impl` does not know, or that cannot run here, stops the run
  before it starts."""
  if impl not in layers.CONV_IMPLS:
    raise UserError(f"conv_impl must be one of {', '.join(layers.CONV_IMPLS)} (got {impl!r})")
  if impl == "onednn" and jax.default_backend() != "cpu":
    raise UserError(f"conv_impl onednn runs on CPU only (this run's devices are "
                    f"{jax.default_backend()}); use auto or xla")
  reason = onednn.unavailable_reason() if impl == "onednn" else None
  if reason is not None:
    raise UserError(f"conv_impl onednn cannot run here: {reason}")


def check_init_from(config: ml_collections.ConfigDict) -> None:
  """A recipe that needs pretrained weights (`init_from_required`) refuses an empty init_from."""
  if config.init_from_required and not config.init_from:
    raise UserError(
        f"this config starts from pretrained weights but init_from is empty: pass "
        f"--config.init_from=DIR (an FCMAE WORKDIR/encoder or a python -m cnn_jax.convert "
        f"output), or --config.init_from_required=False to train {config.model.name} from scratch")


# The batch sizes, checked by the data pipeline's own rule (`pipeline.check_global_batch`).
BATCH_FIELDS = ("data.batch_size", "data.eval_batch_size")
# Least values (field, least): below it a count the loop divides by or counts with stopped the
# run with a ZeroDivisionError, some only at its first log or eval, or with an error about
# another field; checkpoint.keep=0 kept no checkpoint to resume from; a negative seed stopped in
# grain. The rest were taken as they came: a negative halt_after_steps ran no step and exited
# 0, negative data worker/thread/buffer counts ran as if 0 or 1, a negative learning rate or
# weight decay trained uphill or grew the weights, a negative grad_clip_norm meant off.
LEAST_VALUES = (("optimizer.grad_accum_steps", 1), ("log_every_steps", 1),
                ("eval_every_steps", 1), ("checkpoint.every_steps", 1), ("checkpoint.keep", 1),
                ("num_epochs", 0), ("total_steps", 0), ("halt_after_steps", 0),
                ("data.prefetch_to_device", 0), ("data.num_workers", 0), ("data.num_threads", 0),
                ("data.prefetch_batches", 0), ("seed", 0), ("optimizer.learning_rate", 0),
                ("optimizer.weight_decay", 0), ("optimizer.grad_clip_norm", 0),
                ("optimizer.scale_lr_by_batch_over", 0))
# Fractions in [0, 1), which were taken as they came: a label_smoothing of 1.5 trained towards
# negative targets, an ema_decay of 2 grew an EMA without bound.
FRACTION_FIELDS = ("label_smoothing", "ema_decay")
# Fractions in (0, 1]: a layer_decay above 1 (the earliest layers' lr multiplied the most) ran
# as if 1, silently.
POSITIVE_FRACTION_FIELDS = ("optimizer.layer_decay",)


def _field(config: ml_collections.ConfigDict, field: str) -> Any:
  return functools.reduce(getattr, field.split("."), config)


def check_config(config: ml_collections.ConfigDict, process_count: int | None = None) -> None:
  """What the config alone decides about a run, checked before anything is written or queued
  (main's run before it takes its workdir, sweep's points, launch's job): the model, the conv
  impl, the value ranges and a required init_from. `process_count`: the run's (launch knows it
  before the job starts); this process's JAX's by default."""
  registry.get_constructor(config.model.name)
  check_conv_impl(config.conv_impl)
  check_ranges(config, process_count)
  check_init_from(config)


def check_ranges(config: ml_collections.ConfigDict, process_count: int | None = None) -> None:
  """A batch size the data pipeline would refuse (`BATCH_FIELDS`), a value below its least
  (`LEAST_VALUES`) or a fraction outside its range (`FRACTION_FIELDS`: [0, 1);
  `POSITIVE_FRACTION_FIELDS`: (0, 1]) stops the run before it starts, naming the field. A run of
  0 steps is allowed: it evaluates the weights it starts from."""
  if process_count is None:
    process_count = jax.process_count()
  for field in BATCH_FIELDS:
    data.pipeline.check_global_batch(field, _field(config, field), process_count)
  for field, least in LEAST_VALUES:
    if _field(config, field) < least:
      raise UserError(f"{field}={_field(config, field)} must be at least {least}")
  for field in FRACTION_FIELDS:
    if not 0 <= _field(config, field) < 1:
      raise UserError(f"{field}={_field(config, field)} must be in [0, 1)")
  for field in POSITIVE_FRACTION_FIELDS:
    if not 0 < _field(config, field) <= 1:
      raise UserError(f"{field}={_field(config, field)} must be in (0, 1]")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: Task = CLASSIFICATION) -> dict[str, float]:
  """Trains `config.model` on `config.data`, resuming from `workdir` if it holds a checkpoint.

  Returns the final eval metrics (classification: {"loss", "accuracy"}, on the eval split).
  """
  check_config(config)  # before the lock: a refused run leaves no workdir behind
  _check_best_metric(config, task)
  mesh = parallel.create_mesh(config)
  for field in BATCH_FIELDS:
    parallel.check_batch_divisible(_field(config, field), mesh, field)
  # The steps are traced inside the loop, so the whole run sits in the conv impl's scope.
  # Process 0 holds the workdir's lock: a second run on it stops, naming this one.
  with layers.conv_impl(config.conv_impl), \
       workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, task, mesh)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        task: Task, mesh: jax.sharding.Mesh) -> dict[str, float]:
  clock = timing.PhaseClock()  # For the run's `time/*` record.
  _prepare_workdir(workdir)
  train_batches, eval_batches, info = data.create_datasets(config)

  steps_per_epoch = train_batches.steps_per_epoch
  total_steps, schedule = run_schedule(config, steps_per_epoch)

  # A resume restores every leaf of the state, so the state is only traced for its structure:
  # nothing is drawn or compiled for it, and the checkpoint is read straight into the state's
  # shardings, never beside a first copy on the devices.
  resuming = bool(checkpoint.saved_steps(workdir))
  # Pretrained weights (python -m cnn_jax.convert, an FCMAE encoder) start a run, not a resume.
  pretrained = (checkpoint.read_pretrained(config.init_from)
                if config.init_from and not resuming else None)
  model = (nnx.eval_shape(lambda: task.build_model(config)) if resuming
           else _build_for_init_from(task, config, pretrained))
  check_input_shape(model, config.data.batch_size // jax.process_count(), info.image_shape)
  train_graphdef, eval_graphdef, params, model_state = split_model(model)
  if pretrained is not None:
    params, model_state = checkpoint.load_pretrained(params, model_state, config.init_from,
                                                     config.init_head, read=pretrained)
  tx = build_optimizer(config, schedule, model, params)
  initial_state = functools.partial(create_train_state, config, tx=tx)
  state = (jax.eval_shape(initial_state, params, model_state) if resuming
           else initial_state(params, model_state))
  state_shardings = parallel.state_sharding(state, mesh, config.mesh.strategy,
                                            config.mesh.fsdp_min_size)
  state = (jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
               leaf.shape, leaf.dtype, sharding=sharding), state, state_shardings)
           if resuming else parallel.put_state(state, state_shardings))

  ckpt = checkpoint.Checkpointer(workdir, config)
  state, start_step = ckpt.restore_latest(state)
  if start_step:
    print(f"resumed from {workdir} at step {start_step}", flush=True)
  _write_config(workdir, config, start_step)

  train_fn = jit_train_step(task, config, info, mesh, train_graphdef, tx, schedule,
                            state_shardings)
  resident = jax.device_put(train_batches.resident(), parallel.replicated(mesh))
  eval_fn = jit_eval_step(task, mesh, eval_graphdef, state_shardings,
                          hostenv.forward_compiler_options(model))

  writer = metrics.MetricWriter(workdir)
  step_hook = task.make_step_hook(
      config=config, workdir=workdir, mesh=mesh, eval_graphdef=eval_graphdef,
      eval_batches=eval_batches, writer=writer) if task.make_step_hook else None
  progress = metrics.Progress(total_steps, start_step)
  if start_step == 0 and jax.process_index() == 0:
    n_params = sum(int(p.size) for p in jax.tree.leaves(params))
    print(f"{config.model.name}: {n_params:,} parameters; {info.num_train} train / "
          f"{info.num_eval} eval images of {info.image_shape}; {total_steps} steps "
          f"({steps_per_epoch}/epoch) on {mesh.size} {jax.devices()[0].platform} device(s)",
          flush=True)
    if config.init_from:  # load_pretrained refused any weight left out but the classifier's
      print(f"weights from {config.init_from}: " + (
          "all but the classifier, which starts fresh (init_head=drop)"
          if config.init_head == "drop" else "all, the classifier included (init_head=keep)"),
          flush=True)

  halt_at = start_step + config.halt_after_steps if config.halt_after_steps else total_steps
  halt_at = min(halt_at, total_steps)
  train_iter = data.prefetch_to_device(train_batches.iterate(start_step),
                                       functools.partial(parallel.feed_batch, mesh=mesh),
                                       config.data.prefetch_to_device)
  window_metrics: list[dict[str, jax.Array]] = []
  last_log_time, last_log_step = time.perf_counter(), start_step
  clock.split("setup")
  # A logging window's images/s leaves out its time outside the train steps.
  not_steps = ("first_step", "eval")
  unlogged_since, finished = 0.0, False
  eval_metrics: dict[str, float] = {}
  step = start_step
  # The steps run on the state's leaves (jit_train_step); the state is rebuilt where it is read
  # (an eval, a save, the task's hook), valid until the next step donates its arrays.
  state_def, leaves = jax.tree.structure(state), jax.tree.leaves(state)
  del state
  current_state = lambda: jax.tree.unflatten(state_def, leaves)  # noqa: E731
  with _TerminationSignal(start_step) as terminated:
    try:
      while step < halt_at:
        batch = next(train_iter)
        if step == start_step:  # The call compiles the step: timed apart from the others.
          with clock.phase("first_step"):
            leaves, step_metrics = train_fn(leaves, batch, resident)
            jax.block_until_ready(step_metrics)
        else:
          leaves, step_metrics = train_fn(leaves, batch, resident)
        step += 1
        # Kept on device until logging time: no host round-trip, and no op dispatched per
        # step (the eager adds of a running sum cost a small step several per cent).
        window_metrics.append(step_metrics)

        is_last = step == total_steps
        # Read the stop once per step: the handler may fire at any moment, and the save
        # decision and the exit below must agree.
        stop_reason = terminated.stop_reason(step)
        stop_now = step == halt_at or stop_reason is not None
        if step % config.log_every_steps == 0 or is_last or stop_now:
          scalars = {f"train/{k}": v for k, v in metrics.window_means(window_metrics).items()}
          now = time.perf_counter()
          # The first step is left out with its time (a window of it alone has no rate).
          counted = step - last_log_step - (last_log_step == start_step)
          if counted:
            scalars["train/images_per_sec"] = (
                counted * config.data.batch_size
                / max(now - last_log_time - (clock.wall(*not_steps) - unlogged_since), 1e-9))
          last_log_time, last_log_step = now, step
          unlogged_since = clock.wall(*not_steps)
          writer.write_scalars(step, scalars)
          progress.report(step, {k.split("/")[1]: v for k, v in scalars.items()})
          window_metrics = []

        evaluated = None  # This step's eval: its metric goes with the step's checkpoint.
        if step % config.eval_every_steps == 0 or is_last:
          jax.block_until_ready(leaves)  # The steps queued so far are not eval's time.
          with clock.phase("eval"):
            eval_metrics = evaluated = evaluate(eval_fn, current_state(), eval_batches, mesh,
                                                task.summarize_eval)
            writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
            progress.report(step, {f"eval_{k}": v for k, v in eval_metrics.items()})

        force = is_last or stop_now
        if step_hook is not None:
          step_hook(step, current_state(), force)
        if ckpt.is_due(step, force=force, eval_metrics=evaluated):
          # Never checkpoint a diverged state: the last good checkpoint must survive.
          if not np.isfinite(float(step_metrics["loss"])):
            raise FloatingPointError(
                f"non-finite training loss at step {step}; stopped, the last good "
                f"checkpoint (step {ckpt.latest_step()}) is kept in {workdir}/checkpoints")
          ckpt.save(step, current_state(), force=force, eval_metrics=evaluated)
        if stop_reason is not None:
          print(f"{stop_reason}: checkpoint saved at step {step}; "
                "rerun the same command to resume", flush=True)
          break
      finished = True
    finally:
      with clock.phase("checkpoint_wait"):
        ckpt.wait()
        ckpt.close()
      if finished and step > start_step:
        times = clock.record("steps")
        writer.write_scalars(step, times)
        if jax.process_index() == 0:
          print(timing.loop_time_summary(times, step - start_step - 1), flush=True)
      writer.close()

  if step == total_steps and not eval_metrics:
    # Resumed at the very end: nothing trained, so evaluate what was restored.
    eval_metrics = evaluate(eval_fn, current_state(), eval_batches, mesh, task.summarize_eval)
  if step == total_steps and jax.process_index() == 0:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump({"step": step, **eval_metrics}, f)
  return eval_metrics
