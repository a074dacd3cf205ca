"""Orbax checkpointing: periodic async saves, keep-last-K, the best checkpoint by an eval
metric, big_vision-style auto-resume, and pretrained weights (`config.init_from`, written by
`python -m cnn_jax.convert`).

The saved item is the whole TrainState (step, parameters, model state such as BatchNorm
statistics and RNG streams, optimizer state). Typed PRNG keys are stored as their raw
uint32 data, which every Orbax version reads back.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import logging
import operator
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from flax import nnx

from cnn_jax import optim, parallel
from cnn_jax.errors import UserError


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """Leaf path ("opt_state/0/mu/conv/kernel") -> shape, the same for a state and for the
  metadata Orbax reads back (which has dicts and lists where the state has dataclasses and
  tuples)."""
  def name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _mismatch(saved_metadata: Any, target: Any) -> str | None:
  """The first difference in leaves or shapes between a saved item and a restore target,
  in words, with how many more there are; None if there is none."""
  if saved_metadata is None:
    return None
  saved, wanted = _leaf_shapes(saved_metadata), _leaf_shapes(target)
  differences = (
      [f"{p} is in the checkpoint, not in this run" for p in sorted(saved.keys() - wanted.keys())]
      + [f"{p} is in this run, not in the checkpoint" for p in sorted(wanted.keys() - saved.keys())]
      + [f"{p} has shape {saved[p]} in the checkpoint, {wanted[p]} in this run"
         for p in sorted(saved.keys() & wanted.keys()) if saved[p] != wanted[p]])
  if not differences:
    return None
  more = len(differences) - 1
  return differences[0] + (f", and {more} more difference{'s' * (more > 1)}" if more else "")


class UnreadableCheckpoint(Exception):
  """A checkpoint step whose files cannot be read; the message is the reader's first line.

  Orbax raises many kinds of error for one: tensorstore's OUT_OF_RANGE / NOT_FOUND / DATA_LOSS
  as a ValueError, wrapped in a bare Exception when an array's read fails; a corrupt _METADATA
  as a JSONDecodeError; a missing item directory as a KeyError. So a failed read is caught as
  any Exception."""


def _first_line(error: BaseException) -> str:
  """The first line of the innermost cause: the reader's own words, not its wrappers'."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else type(error).__name__)[:300]


# The reads of a failed restore that never started are coroutines never awaited: Python warns
# of each as it is collected.
_NEVER_AWAITED_READ = r"coroutine '_read_array_index_and_device_put' was never awaited"


@contextlib.contextmanager
def _unretrieved_reads_quiet() -> Iterator[None]:
  """When one array's read fails, Orbax's other reads end as coroutines and asyncio tasks whose
  exceptions nobody retrieves, and Python and asyncio's logger print each (about 60 lines) as
  they are collected; the one line that says the step cannot be read is enough."""
  previous = sys.unraisablehook
  asyncio_logger = logging.getLogger("asyncio")
  level = asyncio_logger.level

  def hook(unraisable: Any) -> None:
    if not _is_failed_read_leftover(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  asyncio_logger.setLevel(logging.CRITICAL)
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    if failed:  # A read that succeeded leaves none; a full collection costs seconds in a big heap.
      with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _NEVER_AWAITED_READ, RuntimeWarning)
        gc.collect()  # Collects them now, while they are quiet.
    sys.unraisablehook = previous
    asyncio_logger.setLevel(level)
    if failed:
      _drop_failed_read_leftovers()


def _is_failed_read_leftover(unraisable: Any) -> bool:
  """An Orbax read coroutine collected with its exception, or a callback into the event loop of
  a read that failed, closed by now."""
  if inspect.iscoroutine(unraisable.object):
    return "orbax" in unraisable.object.cr_code.co_filename
  return (unraisable.exc_type is RuntimeError
          and str(unraisable.exc_value) == "Event loop is closed")


def _drop_failed_read_leftovers() -> None:
  """After a failed read, its other reads still finish in tensorstore's threads: each callback
  into the read's event loop, closed by now, ends as an unraisable traceback, and so does each
  read coroutine collected later. For the rest of the process those are dropped, anything
  else is shown as before."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_failed_read_leftovers", False):
    return

  def hook(unraisable: Any) -> None:
    if not _is_failed_read_leftover(unraisable):
      previous(unraisable)

  hook.drops_failed_read_leftovers = True
  sys.unraisablehook = hook
  warnings.filterwarnings("ignore", _NEVER_AWAITED_READ, RuntimeWarning)


def _checkpoints_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _legacy_best_dir(workdir: str) -> str:
  # Runs saved before the best checkpoint joined the others kept it apart, here.
  return os.path.join(os.path.abspath(workdir), "checkpoints_best")


def _manager_best(manager: ocp.CheckpointManager, metric: str) -> tuple[int, float] | None:
  """(step, value) of the manager's best checkpoint by its `best_fn`, if any has `metric`."""
  step = manager.best_step()
  return None if step is None else (step, float(manager.metrics(step)[metric]))


def _best_recorded(directory: str, metric: str, mode: str) -> tuple[int, float] | None:
  """(step, value) of the checkpoint in `directory` with the best recorded `metric`, if any
  recorded one; creates nothing."""
  if not os.path.isdir(directory):
    return None
  with _quiet_absl():  # Orbax warns of each option that read_only overrides.
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        best_fn=operator.itemgetter(metric), best_mode=mode, read_only=True))
  try:
    with _quiet_absl():
      return _manager_best(manager, metric)
  finally:
    manager.close()


def _beats(value: float, best: float, mode: str) -> bool:
  """Whether `value` is strictly better than `best` under checkpoint.best_mode."""
  return value > best if mode == "max" else value < best


def _better(a: tuple[int, float] | None, b: tuple[int, float] | None,
            mode: str) -> tuple[int, float] | None:
  """The better (step, value) of two, `a` on a tie."""
  if a is None or b is None:
    return a or b
  return b if _beats(b[1], a[1], mode) else a


def saved_steps(workdir: str) -> list[int]:
  """The steps of the run's (`Checkpointer`'s) finished checkpoints; creates nothing."""
  directory = _checkpoints_dir(workdir)
  return ocp.path.step.checkpoint_steps(directory) if os.path.isdir(directory) else []


BEST_MODES = ("max", "min")


def _drop_missing_metrics_warning(record: logging.LogRecord) -> bool:
  # Orbax warns at every save without metrics once a best metric is tracked; the regular saves
  # between evals have none, by design.
  return "did not provide metrics" not in record.getMessage()


class Checkpointer:
  """Orbax's CheckpointManager for the run's TrainState, in WORKDIR/checkpoints: a save every
  `checkpoint.every_steps` steps and at the end, keeping the last `checkpoint.keep`; with
  `checkpoint.best_metric`, also a save at every eval that beats the best value so far, and the
  best one is kept past the rotation. An eval's metrics are recorded with its step's
  checkpoint, so a resumed run knows the value to beat.

  One manager keeps both: a step that is a regular save and a new best is written once.
  Orbax's fixed cost is ~60 ms of CPU a save however small the state, and evals and saves
  fall on the same steps by default (experiments/cpu_speed/)."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    settings = config.checkpoint
    self.metric: str | None = settings.best_metric or None
    self.mode: str = settings.best_mode
    keep: list[Any] = [ocp.checkpoint_managers.LatestN(n=settings.keep)]
    best_fn = None
    if self.metric:
      best_fn = operator.itemgetter(self.metric)
      keep.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=self.mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
      logging.getLogger("absl").addFilter(_drop_missing_metrics_warning)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=settings.every_steps,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(keep),
        best_fn=best_fn, best_mode=self.mode,
        enable_async_checkpointing=settings.use_async,
        create=True)
    self.manager = ocp.CheckpointManager(_checkpoints_dir(workdir), options=options)
    self.best_step: int | None = None
    self.best_value: float | None = None
    if self.metric:
      # A run resumed from before the join: the value to beat may be its old best's.
      recorded = _better(
          _manager_best(self.manager, self.metric),
          _best_recorded(_legacy_best_dir(workdir), self.metric, self.mode), self.mode)
      if recorded is not None:
        self.best_step, self.best_value = recorded

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def improves(self, value: float) -> bool:
    if self.best_value is None:
      return bool(np.isfinite(value))
    return _beats(value, self.best_value, self.mode)

  def _new_best(self, step: int, eval_metrics: dict[str, float] | None) -> float | None:
    """The tracked metric's value in `eval_metrics` when it beats the best so far."""
    if self.metric is None or eval_metrics is None:
      return None
    if self.metric not in eval_metrics:
      raise UserError(f"checkpoint.best_metric {self.metric!r} is not an eval metric; "
                      f"this run's are {', '.join(sorted(eval_metrics))}")
    value = float(eval_metrics[self.metric])
    return value if self.improves(value) and step != self.best_step else None

  def is_due(self, step: int, *, force: bool = False,
             eval_metrics: dict[str, float] | None = None) -> bool:
    """Whether `save` writes `step`: forced, a regular save step, or an eval's new best."""
    return (force or self.manager.should_save(step)
            or self._new_best(step, eval_metrics) is not None)

  def save(self, step: int, state: Any, *, force: bool = False,
           eval_metrics: dict[str, float] | None = None) -> bool:
    """Saves `step` when `is_due`, with the eval's tracked metric when `eval_metrics` (the
    eval at this step) is given; returns whether it saved."""
    best = self._new_best(step, eval_metrics)
    metrics = ({self.metric: float(eval_metrics[self.metric])}
               if self.metric and eval_metrics is not None else None)
    saved = self.manager.save(step, args=ocp.args.StandardSave(parallel.keys_to_data(state)),
                              metrics=metrics, force=force or best is not None)
    if saved and best is not None:
      self.best_step, self.best_value = step, best
    return saved

  def restore(self, state_like: Any, step: int | None = None) -> Any:
    """Restores into the structure, shapes and shardings of `state_like` (concrete or abstract).
    UnreadableCheckpoint when the step's files cannot be read."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_like)
    target = parallel.keys_to_data(abstract)
    try:
      with _unretrieved_reads_quiet():
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:
      reason = _first_line(e)
      try:
        mismatch = _mismatch(self.manager.item_metadata(step), target)
      except Exception:
        mismatch = None
    else:
      return parallel.data_to_keys(restored, abstract)
    # Raised here, not in the except clause: the reader's error (and the reads it left pending)
    # must not stay referenced as this one's context.
    if mismatch is None:
      raise UnreadableCheckpoint(reason)
    raise UserError(
        f"the checkpoint at step {step} in {self.manager.directory} does not fit this run's "
        f"state ({mismatch}); resume with the config it was saved with (config.json beside it) "
        "or start a new --workdir")

  def restore_latest(self, state_like: Any) -> tuple[Any, int]:
    """(state, step) from the newest checkpoint that can be read; (state_like, 0) when there is
    none. Newer steps whose files cannot be read (truncated, missing, corrupt: a copy cut
    short, a disk fault) are moved aside to WORKDIR/checkpoints_unreadable/, each with a warning,
    so that a rerun or a requeued job resumes from the step before instead of failing at every
    start, and the run's later save of that step is not refused. When none can be read, or with
    several processes (which would all have to skip the same steps), one line names the step
    and nothing is moved."""
    unreadable = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.restore(state_like, step)
      except UnreadableCheckpoint as e:
        unreadable.append((step, str(e)))
        if jax.process_count() > 1:
          break
        continue
      if unreadable:
        self._move_aside(unreadable)
      return state, step
    if not unreadable:
      return state_like, 0
    step, reason = unreadable[0]
    directory = self.manager.directory
    if jax.process_count() == 1:
      raise UserError(f"none of the {len(unreadable)} checkpoints in {directory} can be read "
                      f"(step {step}: {reason}); restore them from a good copy or start a new "
                      "--workdir")
    raise UserError(
        f"the checkpoint at step {step} in {directory} cannot be read ({reason}); move "
        f"{directory}/{step} out of {directory} to resume from the one before, or start a new "
        "--workdir")

  def _move_aside(self, unreadable: list[tuple[int, str]]) -> None:
    directory = str(self.manager.directory)
    aside = os.path.join(os.path.dirname(directory), "checkpoints_unreadable")
    os.makedirs(aside, exist_ok=True)
    for step, reason in unreadable:
      target, n = os.path.join(aside, str(step)), 1
      while os.path.exists(target):
        n += 1
        target = os.path.join(aside, f"{step}-{n}")
      os.rename(os.path.join(directory, str(step)), target)
      print(f"warning: the checkpoint at step {step} cannot be read ({reason}); moved it to "
            f"{target}", file=sys.stderr, flush=True)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


# ----------------------------------------------------------------------------------------
# Pretrained weights (`config.init_from`), as written by `python -m cnn_jax.convert` and by
# an FCMAE run's encoder export.

PRETRAINED_JSON = "pretrained.json"
PRETRAINED_WEIGHTS = "weights"
INIT_HEAD_CHOICES = ("keep", "drop")


def _nested(flat: dict[tuple[Any, ...], np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(str(part), {})
    node[str(path[-1])] = value
  return tree


def write_pretrained(out_dir: str, params: dict[tuple[Any, ...], np.ndarray],
                     batch_stats: dict[tuple[Any, ...], np.ndarray], meta: dict[str, Any], *,
                     replace: bool = False) -> None:
  """Writes a pretrained checkpoint: OUT_DIR/weights (Orbax, from flat {path: array} dicts) and
  OUT_DIR/pretrained.json (`meta`: model, num_classes, has_head, head, source, checkpoint).

  Atomic: the files are staged beside OUT_DIR and renamed into place, so a failure leaves no
  OUT_DIR. An existing non-empty OUT_DIR is an error unless `replace`."""
  out_dir = os.path.abspath(out_dir)
  if (not replace and os.path.exists(out_dir)
      and (not os.path.isdir(out_dir) or os.listdir(out_dir))):
    raise UserError(f"{out_dir} already exists and is not empty; choose a new directory")
  parent = os.path.dirname(out_dir)
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp", dir=parent)
  except OSError as e:
    raise UserError(f"cannot write to {parent}: {e.strerror or e}") from None
  try:
    tree = {"params": _nested(params)}
    if batch_stats:
      tree["batch_stats"] = _nested(batch_stats)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(staging, PRETRAINED_WEIGHTS), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    with open(os.path.join(staging, PRETRAINED_JSON), "w") as f:
      json.dump(meta, f, indent=2)
    if os.path.isdir(out_dir):
      shutil.rmtree(out_dir)
    elif os.path.exists(out_dir):
      os.remove(out_dir)
    os.rename(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def read_pretrained(directory: str) -> tuple[dict[str, Any], dict[str, np.ndarray],
                                              dict[str, np.ndarray]]:
  """(metadata, flat params, flat BatchNorm statistics) of a converted checkpoint."""
  meta_path = os.path.join(directory, PRETRAINED_JSON)
  if not os.path.isfile(meta_path):
    raise UserError(f"init_from={directory!r} is not a converted checkpoint (no "
                    f"{PRETRAINED_JSON}); create one with python -m cnn_jax.convert")
  with open(meta_path) as f:
    meta = json.load(f)
  weights = os.path.abspath(os.path.join(directory, PRETRAINED_WEIGHTS))
  checkpointer = ocp.StandardCheckpointer()
  try:
    saved = checkpointer.metadata(weights)
    saved = getattr(saved, "item_metadata", saved)
    # Onto this process's first device: the caller shards the state afterwards.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    tree = checkpointer.restore(weights, jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved))
  finally:
    checkpointer.close()
  tree = jax.tree.map(np.asarray, tree)
  return (meta, optim.named_leaves(tree.get("params", {})),
          optim.named_leaves(tree.get("batch_stats", {})))


def load_pretrained(params: Any, model_state: Any, directory: str, init_head: str = "keep",
                    read: tuple[dict[str, Any], dict[str, np.ndarray],
                                dict[str, np.ndarray]] | None = None) -> tuple[Any, Any]:
  """`params` and `model_state` (nnx.State) with the weights of a converted checkpoint.

  init_head "keep": every parameter, the classifier included, comes from the checkpoint, so
  the shapes (number of classes) must agree. "drop": the classifier (the paths listed under
  "head" in pretrained.json) keeps its fresh initialisation, for another number of classes or
  an encoder-only (FCMAE) checkpoint. Any other missing, unused or misshapen weight is a
  UserError naming it. `read`: what `read_pretrained(directory)` gave, if the caller read it.
  """
  if init_head not in INIT_HEAD_CHOICES:
    raise UserError(f"init_head={init_head!r}; choose from {', '.join(INIT_HEAD_CHOICES)}")
  meta, saved_params, saved_stats = read or read_pretrained(directory)
  return apply_pretrained(params, model_state, meta, saved_params, saved_stats, init_head,
                          f"{directory} ({meta.get('model', '?')})")


def apply_pretrained(params: Any, model_state: Any, meta: dict[str, Any],
                     saved_params: dict[str, np.ndarray], saved_stats: dict[str, np.ndarray],
                     init_head: str, source: str) -> tuple[Any, Any]:
  """`load_pretrained` on weights already read: flat {dotted name: array} dicts and their
  metadata ("head": the classifier's paths, "num_classes"); `source` names them in errors."""
  heads = tuple(meta.get("head", ()))

  def is_head(name: str) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)

  def fill(tree: Any, saved: dict[str, np.ndarray], only: set[str] | None) -> Any:
    used = set()

    def replace(path, value):
      name = ".".join(optim.path_names(path))
      if only is not None and name not in only:
        return value
      if is_head(name) and init_head == "drop":
        return value
      if name not in saved:
        if is_head(name):
          raise UserError(f"{source} has no classifier weights ({name}); set "
                          "--config.init_head=drop to train a new head")
        raise UserError(f"{source} has no weight for {name}: was it converted for another "
                        "model?")
      if tuple(saved[name].shape) != tuple(value.shape):
        hint = (f"; set --config.model.num_classes={meta.get('num_classes')} or "
                "--config.init_head=drop" if is_head(name) else "")
        raise UserError(f"{name} has shape {tuple(saved[name].shape)} in {source} but "
                        f"{tuple(value.shape)} in the model{hint}")
      used.add(name)
      return jax.numpy.asarray(saved[name], dtype=value.dtype)

    tree = jax.tree_util.tree_map_with_path(replace, tree)
    unused = sorted(k for k in saved if k not in used and not (is_head(k) and init_head == "drop"))
    if unused:
      raise UserError(f"{source} holds {len(unused)} weight(s) the model lacks, e.g. "
                      f"{unused[0]} {tuple(saved[unused[0]].shape)}: was it converted for "
                      "another model?")
    return tree

  params = fill(params, saved_params, None)
  model_state = fill(model_state, saved_stats, batch_stat_names(model_state))
  return params, model_state


def batch_stat_names(model_state: Any) -> set[str]:
  """The dotted names of the BatchNorm statistics in a model's state (nnx.State), the only
  part of it that is weights: the rest is RNG stream counters."""
  return {".".join(str(p) for p in path) for path, variable in model_state.flat_state()
          if isinstance(variable, nnx.BatchStat)}


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


def read_run_weights(workdir: str, ema: bool = False, best: tuple[str, str] | None = None
                     ) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(step, flat params, flat model state) of a training run's checkpoint: with `best`, the
  run's (checkpoint.best_metric, checkpoint.best_mode), the checkpoint with the best eval value
  recorded, else the latest. With `ema`, the params are the run's exponential moving average of
  them (UserError if it kept none). Runs saved before the best checkpoint joined the others
  kept it apart, in WORKDIR/checkpoints_best: the better recorded value of the two is read."""
  params_key = "ema_params" if ema else "params"
  directory, step = _checkpoints_dir(workdir), None
  if best is not None:
    metric, mode = best
    in_run = _best_recorded(directory, metric, mode)
    legacy = _best_recorded(_legacy_best_dir(workdir), metric, mode)
    chosen = _better(in_run, legacy, mode)
    if chosen is not None:
      step = chosen[0]
      if chosen is not in_run:
        directory = _legacy_best_dir(workdir)
  no_checkpoint = f"{workdir} holds no checkpoint (in checkpoints/); did the run save one?"
  if not os.path.isdir(directory):
    raise UserError(no_checkpoint)
  with _quiet_absl():
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise UserError(no_checkpoint)
    try:
      with ocp.StandardCheckpointer() as reader, _quiet_absl():
        # Orbax warns that the step's item lacks a metadata file of its own; the tree's
        # metadata, which is all this needs, is there.
        saved = reader.metadata(os.path.join(directory, str(step), "default"))
    except Exception as e:
      saved, reason = None, _first_line(e)
    else:
      reason = "its tree's metadata is missing"
    saved = getattr(saved, "item_metadata", saved)
    if saved is None:
      raise UserError(f"the checkpoint at step {step} in {directory} cannot be read "
                      f"({reason})")
    if saved.get(params_key) is None:
      raise UserError(f"the run in {workdir} kept no EMA of its parameters (its config has "
                      "ema_decay = 0); use the trained parameters")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    # Only the parameters and model state: the optimizer state is not needed to predict.
    wanted = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          {k: saved[k] for k in (params_key, "model_state")})
    try:
      with _quiet_absl(), _unretrieved_reads_quiet():
        tree = manager.restore(step, args=ocp.args.PyTreeRestore(
            item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
            partial_restore=True))
    except Exception as e:
      reason = _first_line(e)
    else:
      reason = ""
    if reason:  # Raised here: the reader's error must not stay referenced as the context.
      raise UserError(f"the checkpoint at step {step} in {directory} cannot be read "
                      f"({reason})")
  finally:
    manager.close()
  tree = jax.tree.map(np.asarray, tree)

  def names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # A saved nnx.State keeps each Variable's array under "value".
    return {k.removesuffix(".value"): v for k, v in flat.items()}

  return (step, names(optim.named_leaves(tree[params_key])),
          names(optim.named_leaves(tree["model_state"])))
