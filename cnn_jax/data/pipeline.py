"""grain pipelines over random-access image sources (TFDS, ImageFolder, synthetic).

The training stream is a grain `MapDataset` whose element `step` is this process's share of
the global batch at that step, a pure function of (seed, step):

  global position g = step * global_batch + row          (row in [0, global_batch))
  record            = permutation(seed, epoch)[g mod epoch_length]   (drop-remainder epochs)
  augmentation rng  = np.random.default_rng([seed, g, 7])

Process p decodes only rows [p * local, (p + 1) * local) of each global batch, so processes
read disjoint records, and the global batch does not depend on how many processes share it.
Resuming at step s slices the MapDataset at s: no iterator state to checkpoint, exact order.
Decoding runs in grain's read threads (`data.num_threads`) and, with `data.num_workers` > 0,
in grain worker processes (`mp_prefetch`), each taking whole batches, so the order is kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from cnn_jax.data.sources.images import RecordLoader
from cnn_jax.errors import UserError

Batch = dict[str, np.ndarray]

# An upper bound on steps: the train MapDataset is "infinite" (sliced from the resume step).
_MAX_STEPS = 2**40


class _TrainBatchFn:
  """step -> this process's rows of the global batch at that step (picklable for workers)."""

  def __init__(self, loader: RecordLoader, transform, *, global_batch_size: int,
               local_batch_size: int, process_index: int, steps_per_epoch: int, seed: int):
    self.loader = loader
    self.transform = transform
    self.global_batch_size = global_batch_size
    self.local_batch_size = local_batch_size
    self.process_index = process_index
    self.epoch_length = steps_per_epoch * global_batch_size
    self.seed = seed
    self._permutations: dict[int, np.ndarray] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_permutations"] = {}
    return state

  def permutation(self, epoch: int) -> np.ndarray:
    perm = self._permutations.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.loader))
      self._permutations = {epoch: perm}  # Keep one epoch: memory stays flat.
    return perm

  def example(self, position: int) -> tuple[np.ndarray, int]:
    epoch, within = divmod(position, self.epoch_length)
    img, label = self.loader.load(int(self.permutation(epoch)[within]))
    return self.transform(img, np.random.default_rng([self.seed, position, 7])), label

  def __call__(self, step: int) -> Batch:
    first = step * self.global_batch_size + self.process_index * self.local_batch_size
    images, labels = zip(*(self.example(first + j) for j in range(self.local_batch_size)))
    return {"image": np.stack(images).astype(np.float32, copy=False),
            "label": np.asarray(labels, np.int32)}


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))


def _ensure_flags_parsed() -> None:
  """grain reads absl flags (with their defaults) in its workers; outside an absl app (tests,
  notebooks) nothing has parsed them yet."""
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _iterate(ds: grain.MapDataset, *, num_workers: int, num_threads: int,
             prefetch_batches: int) -> Iterator[Batch]:
  _ensure_flags_parsed()
  it = ds.to_iter_dataset(_read_options(num_threads, max(prefetch_batches, num_threads)))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, prefetch_batches)))
  return iter(it)


def check_global_batch(field: str, global_batch_size: int, process_count: int,
                       num_records: int | None = None) -> int:
  """This process's share of a global batch; a size that cannot be split is the user's error.

  `num_records` (training only) must hold at least one whole batch."""
  if num_records is not None and global_batch_size > num_records:
    raise UserError(f"{field}={global_batch_size} is larger than the {num_records} "
                    "training images")
  if global_batch_size % process_count:
    raise UserError(f"{field}={global_batch_size} is not divisible by the "
                    f"{process_count} processes")
  return global_batch_size // process_count


class RecordTrainBatches:
  """Training batches over a record source; same interface as `TrainBatches`."""

  def __init__(self, source, transform, *, global_batch_size: int, seed: int, channels: int,
               on_corrupt: str, process_index: int = 0, process_count: int = 1,
               num_workers: int = 0, num_threads: int = 1, prefetch_batches: int = 2):
    self.local_batch_size = check_global_batch("data.batch_size", global_batch_size,
                                               process_count, len(source))
    self.source = source
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = len(source) // global_batch_size
    self.num_workers, self.num_threads = num_workers, num_threads
    self.prefetch_batches = prefetch_batches
    self._fn = _TrainBatchFn(
        RecordLoader(source, channels, on_corrupt), transform,
        global_batch_size=global_batch_size, local_batch_size=self.local_batch_size,
        process_index=process_index, steps_per_epoch=self.steps_per_epoch, seed=seed)
    self.dataset = grain.MapDataset.range(_MAX_STEPS).map(self._fn)

  def batch(self, step: int) -> Batch:
    return self._fn(step)

  def iterate(self, start_step: int) -> Iterator[Batch]:
    return _iterate(self.dataset[start_step:], num_workers=self.num_workers,
                    num_threads=self.num_threads, prefetch_batches=self.prefetch_batches)


class _EvalBatchFn:
  def __init__(self, loader: RecordLoader, transform, image_shape, *, global_batch_size: int,
               local_batch_size: int, process_index: int):
    self.loader = loader
    self.transform = transform
    self.image_shape = tuple(image_shape)
    self.global_batch_size = global_batch_size
    self.local_batch_size = local_batch_size
    self.process_index = process_index

  def __call__(self, b: int) -> Batch:
    first = b * self.global_batch_size + self.process_index * self.local_batch_size
    n = len(self.loader)
    images = np.zeros((self.local_batch_size, *self.image_shape), np.float32)
    labels = np.zeros((self.local_batch_size,), np.int32)
    mask = np.zeros((self.local_batch_size,), np.float32)
    for j in range(self.local_batch_size):
      if first + j < n:
        img, labels[j] = self.loader.load(first + j)
        images[j] = self.transform(img)
        mask[j] = 1.0
    return {"image": images, "label": labels, "mask": mask}


class RecordEvalBatches:
  """The whole eval split in fixed-size batches; the last is padded (zeros) and masked out."""

  def __init__(self, source, transform, image_shape, *, global_batch_size: int, channels: int,
               on_corrupt: str, process_index: int = 0, process_count: int = 1,
               num_workers: int = 0, num_threads: int = 1, prefetch_batches: int = 2):
    self.local_batch_size = check_global_batch("data.eval_batch_size", global_batch_size,
                                               process_count)
    self.source = source
    self.global_batch_size = global_batch_size
    self.num_batches = -(-len(source) // global_batch_size)
    self.num_workers, self.num_threads = num_workers, num_threads
    self.prefetch_batches = prefetch_batches
    fn = _EvalBatchFn(RecordLoader(source, channels, on_corrupt), transform, image_shape,
                      global_batch_size=global_batch_size,
                      local_batch_size=self.local_batch_size, process_index=process_index)
    self.dataset = grain.MapDataset.range(self.num_batches).map(fn)

  def __iter__(self) -> Iterator[Batch]:
    return _iterate(self.dataset, num_workers=self.num_workers, num_threads=self.num_threads,
                    prefetch_batches=self.prefetch_batches)


def prefetch_to_device(batches: Iterator[Batch], put, size: int = 2) -> Iterator:
  """Yields `put(batch)` (e.g. `lambda b: parallel.shard_batch(b, mesh)`) `size` batches ahead.

  Host-to-device copies are asynchronous in JAX, so issuing them early overlaps the transfer
  of the next batches with the current step's compute.
  """
  import collections

  queue = collections.deque()
  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
