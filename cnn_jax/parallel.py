"""Device mesh, sharding rules and multi-host start-up: the one place that decides where
arrays live.

The mesh has one `data` axis over all devices. The batch is always split over it. Parameters
and optimizer state are either replicated (`mesh.strategy=data_parallel`) or, with
`mesh.strategy=fsdp`, each large array is split over the same axis along its largest
divisible dimension (ZeRO-3 style, as big_vision's `fsdp` rule); XLA inserts the all-gathers
and reduce-scatters.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn_jax import cli
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


def is_typed_key(x: Any) -> bool:
  """A typed PRNG key array (nnx's RNG streams), or an abstract one."""
  return isinstance(x, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key)


def key_impl(key: jax.Array | jax.ShapeDtypeStruct) -> Any:
  """jax.random.key_impl of a key or of an abstract one, which key_impl itself refuses: read
  under a trace, where the key is a tracer of its dtype."""
  impls = []
  jax.eval_shape(lambda k: impls.append(jax.random.key_impl(k)), key)
  return impls[0]


def keys_to_data(tree: Any) -> Any:
  """`tree` with every typed key as its uint32 key data (what Orbax stores and device_put
  places across processes); an abstract key (a restore target) as the data's abstract array,
  with the key's sharding."""
  def convert(x):
    if not is_typed_key(x):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      data = jax.eval_shape(jax.random.key_data, x)
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=x.sharding)
    return jax.random.key_data(x)
  return jax.tree.map(convert, tree)


def data_to_keys(tree: Any, like: Any) -> Any:
  """keys_to_data undone: the leaves that are typed keys in `like` (concrete or abstract)
  wrapped back into keys of their implementation."""
  return jax.tree.map(
      lambda x, ref: jax.random.wrap_key_data(x, impl=key_impl(ref)) if is_typed_key(ref) else x,
      tree, like)


def put_state(state: Any, shardings: Any) -> Any:
  """jax.device_put(state, shardings) of a state that every process holds in full. With several
  processes the shardings span other processes' devices, and device_put refuses typed keys
  there and makes replicated arrays without readable shards (which Orbax reads) of device
  arrays: the leaves go from host copies, the keys as their key data."""
  if jax.process_count() == 1:
    return jax.device_put(state, shardings)
  host = jax.tree.map(np.asarray, keys_to_data(state))
  return data_to_keys(jax.device_put(host, shardings), state)


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None, auto: bool = False) -> None:
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
    if auto or env.get("JAX_AUTO_DISTRIBUTED") == "1":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize()
    return
  if num_processes is None or process_id is None:
    raise UserError("a coordinator address needs the number of processes and this process's "
                    "id (--num_processes, --process_id or JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
  # CPU processes exchange collectives through gloo; GPUs and TPUs ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


# XLA:CPU takes a host array without copying it when its data starts on a 64-byte boundary.
_CPU_ZERO_COPY_ALIGNMENT = 64


def _zero_copy_aligned(array: np.ndarray) -> np.ndarray:
  """`array`, or a copy of it whose data starts on XLA:CPU's zero-copy boundary."""
  array = np.asarray(array)
  if array.flags.c_contiguous and array.ctypes.data % _CPU_ZERO_COPY_ALIGNMENT == 0:
    return array
  buffer = np.empty(array.nbytes + _CPU_ZERO_COPY_ALIGNMENT, np.uint8)
  start = -buffer.ctypes.data % _CPU_ZERO_COPY_ALIGNMENT
  aligned = buffer[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
  np.copyto(aligned, array)
  return aligned


def feed_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Any]:
  """What the loop hands its jitted steps for a batch of host arrays.

  On a one-process CPU mesh: the host arrays, each starting on a 64-byte boundary, which
  XLA:CPU takes without a copy. Either copy costs a small step more than it saves: a put on the
  devices before the step slowed LeNet-5's feed, and arrays off the boundary, copied in the
  call, made ResNet-20's step fault its temporaries in again (experiments/cpu_speed/, stop 42).
  Elsewhere `shard_batch`, issued ahead of the step by `data.prefetch_to_device`, so that the
  copy overlaps the step before it.
  """
  if jax.process_count() == 1 and all(d.platform == "cpu" for d in mesh.devices.flat):
    return {k: _zero_copy_aligned(v) for k, v in local_batch.items()}
  return shard_batch(local_batch, mesh)


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's rows, split over the `data` axis."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    # The same arrays in one call, in less host time than the general path's per-key calls
    # (experiments/cpu_speed/, stop 31).
    return jax.device_put(local_batch, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


FAILURE_KEY = "cnn_jax/failed_process"


def _named_one_line(e: BaseException) -> str:
  """What another process prints of this one's failure: the type too, as it has no traceback."""
  text = cli.one_line(e)
  return text if text == type(e).__name__ else f"{type(e).__name__}: {text}"


@contextlib.contextmanager
def stop_all_on_failure(ack_timeout_s: float = 10.0) -> Iterator[None]:
  """In a multi-process run, one process's failure stops all of them at once, each saying
  which process failed and why.

  Without it, a process that raises leaves the others blocked in the next collective until
  jax.distributed's shutdown barrier times out (measured: 5 minutes, then every process aborts
  with "another task died" and a C++ stack, not naming the task). Here the failing process
  publishes one line in the coordination service's key-value store; a thread in every other
  process waits on that key, prints it and exits 1. The failing process waits (at most
  `ack_timeout_s`) until the others have read it, prints its own error (a UserError as one
  `error:` line, exit 2; anything else with its traceback, exit 1) and exits without the
  shutdown barrier, which could only time out now. The first failure wins: a process whose
  collective broke because a peer left reports that peer's failure, not its own symptom.
  """
  if jax.process_count() == 1:
    yield
    return
  from jax._src import distributed
  client = distributed.global_state.client
  me, count = jax.process_index(), jax.process_count()
  finished = threading.Event()

  def watch() -> None:
    failures_in_a_row = 0
    while not finished.is_set():
      try:
        message = client.blocking_key_value_get(FAILURE_KEY, 1000)
      except Exception as e:  # A timeout (nothing failed yet) or the coordinator is gone.
        if "DEADLINE_EXCEEDED" in str(e) or "deadline" in str(e).lower():
          failures_in_a_row = 0
          continue
        failures_in_a_row += 1
        if failures_in_a_row < 30 or finished.is_set():
          time.sleep(1.0)
          continue
        message = f"lost the coordination service (process 0): {_named_one_line(e)}"
      if finished.is_set():
        return
      print(f"error: stopping process {me} of {count}: {message}", file=sys.stderr, flush=True)
      acknowledge_and_outlive_the_failed()
      sys.stdout.flush()
      os._exit(1)

  def acknowledge_and_outlive_the_failed() -> None:
    with contextlib.suppress(Exception):
      client.key_value_set(f"{FAILURE_KEY}/ack/{me}", "1")
    if me == 0:
      # Process 0 hosts the coordination service. Were it to exit while the failed process is
      # still leaving, that process's coordination client would abort it (SIGABRT and a C++
      # log line in place of its exit code 2 and its one-line error).
      with contextlib.suppress(Exception):
        client.blocking_key_value_get(f"{FAILURE_KEY}/gone", int(2000 * ack_timeout_s))
        time.sleep(1.0)  # "gone" is said just before its os._exit, which takes a moment

  watcher = threading.Thread(target=watch, name="cnn_jax-peer-failure", daemon=True)
  watcher.start()
  try:
    yield
  except BaseException as e:
    finished.set()
    if isinstance(e, SystemExit) and e.code in (0, None):
      raise
    reason = (f"exit code {e.code}" if isinstance(e, SystemExit) else _named_one_line(e))
    message = f"process {me} of {count} on {socket.gethostname()} failed: {reason}"
    first = True
    try:
      client.key_value_set(FAILURE_KEY, message)
    except Exception:  # Another process failed first: that is the cause to report.
      first = False
      with contextlib.suppress(Exception):
        message = client.key_value_try_get(FAILURE_KEY)
    # Say why first: once the others leave, the coordination client adds its own noise.
    if isinstance(e, SystemExit):  # cli.fail already said why
      code = e.code if isinstance(e.code, int) else 1
    elif isinstance(e, UserError):
      print(f"error: {e}", file=sys.stderr, flush=True)
      code = 2
    elif first:
      traceback.print_exc()
      code = 1
    else:
      print(f"error: stopping process {me} of {count}: {message}", file=sys.stderr, flush=True)
      code = 1
    if first:  # Keep the coordinator up until the others have read the news.
      deadline = time.monotonic() + ack_timeout_s
      for other in range(count):
        left_ms = int(1000 * (deadline - time.monotonic()))
        if other == me or left_ms <= 0:
          continue
        with contextlib.suppress(Exception):
          client.blocking_key_value_get(f"{FAILURE_KEY}/ack/{other}", left_ms)
      with contextlib.suppress(Exception):
        client.key_value_set(f"{FAILURE_KEY}/gone", "1")
    else:
      acknowledge_and_outlive_the_failed()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  finally:
    finished.set()
  watcher.join(timeout=5)
