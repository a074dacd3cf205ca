"""Orbax checkpointing: periodic async saves, keep-last-K, big_vision-style auto-resume.

The saved item is the whole TrainState (step, parameters, model state such as BatchNorm
statistics and RNG streams, optimizer state). Typed PRNG keys are stored as their raw
uint32 data, which every Orbax version reads back.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp


def _is_typed_key(x: Any) -> bool:
  return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _abstract_keys_to_data(tree: Any) -> Any:
  def convert(x):
    if _is_typed_key(x):
      return jax.ShapeDtypeStruct(
          jax.eval_shape(jax.random.key_data, x).shape, jax.numpy.uint32, sharding=x.sharding)
    return x
  return jax.tree.map(convert, tree)


def _data_to_keys(restored: Any, like: Any) -> Any:
  def convert(x, ref):
    if _is_typed_key(ref):
      return jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
    return x
  return jax.tree.map(convert, restored, like)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one TrainState item."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=config.checkpoint.every_steps,
        max_to_keep=config.checkpoint.keep,
        enable_async_checkpointing=config.checkpoint.use_async,
        create=True)
    self.manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.StandardSave(_keys_to_data(state)), force=force)

  def restore(self, state_like: Any, step: int | None = None) -> Any:
    """Restores into the structure, shapes and shardings of `state_like` (concrete or abstract)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_like)
    restored = self.manager.restore(
        step, args=ocp.args.StandardRestore(_abstract_keys_to_data(abstract)))
    return _data_to_keys(restored, abstract)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
