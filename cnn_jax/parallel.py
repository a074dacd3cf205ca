"""Device mesh, sharding rules and multi-host start-up: the one place that decides where
arrays live.

The mesh has one `data` axis over all devices. The batch is always split over it. Parameters
and optimizer state are either replicated (`mesh.strategy=data_parallel`) or, with
`mesh.strategy=fsdp`, each large array is split over the same axis along its largest
divisible dimension (ZeRO-3 style, as big_vision's `fsdp` rule); XLA inserts the all-gathers
and reduce-scatters.
"""

from __future__ import annotations

import os
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


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int) -> P:
  """Split the largest dimension divisible by `num_shards`; small arrays stay whole."""
  if int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % num_shards == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def state_sharding(state: Any, mesh: Mesh, strategy: str = "data_parallel",
                   fsdp_min_size: int = 2 ** 14) -> Any:
  """Sharding of every leaf of the train state, per `mesh.strategy`."""
  if strategy == "data_parallel":
    return jax.tree.map(lambda _: replicated(mesh), state)
  if strategy == "fsdp":
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), mesh.size, fsdp_min_size)),
        state)
  raise UserError(f"unknown mesh.strategy {strategy!r}; choose data_parallel or fsdp")


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """Joins a multi-process run (GPU cluster, TPU pod, or several CPU processes).

  Arguments left None come from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID; with none of them set, nothing happens (single process), except on TPU
  pods and SLURM, where jax.distributed detects the cluster itself when
  JAX_AUTO_DISTRIBUTED=1.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in env:
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in env:
    process_id = int(env["JAX_PROCESS_ID"])
  if coordinator_address is None:
    if env.get("JAX_AUTO_DISTRIBUTED") == "1":
      jax.distributed.initialize()
    return
  if num_processes is None or process_id is None:
    raise UserError("a coordinator address needs the number of processes and this process's "
                    "id (--num_processes, --process_id or JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
  # CPU processes exchange collectives through gloo; GPUs and TPUs ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's rows, split over the `data` axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
