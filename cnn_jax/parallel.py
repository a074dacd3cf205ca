"""Device mesh and sharding rules: the one place that decides where arrays live.

For now: pure data parallelism over a 1-D `data` mesh axis; parameters and optimizer state
are replicated. FSDP will add rules here, not in the training loop.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn_jax.errors import UserError

DATA_AXIS = "data"


def create_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A mesh over all devices (or the first `config.mesh.num_devices`, when > 0)."""
  devices = jax.devices()
  wanted = config.mesh.num_devices
  if wanted > 0:
    if wanted > len(devices):
      raise UserError(f"mesh.num_devices={wanted} but only {len(devices)} devices are visible")
    devices = devices[:wanted]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size:
    raise UserError(f"{what}={batch_size} is not divisible by the {mesh.size} devices")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def state_sharding(state: Any, mesh: Mesh) -> Any:
  """Sharding of every leaf of the train state: replicated (data parallel)."""
  return jax.tree.map(lambda _: replicated(mesh), state)


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's rows, split over the `data` axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
