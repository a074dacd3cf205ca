"""The one batching path, for every source: a grain `MapDataset` whose element `step` is this
process's share of the global batch at that step, a pure function of (seed, step).

A source gives records `(image, label)` read at random (`sources.Splits`). For every source:

  global position g = step * global_batch + row          (row in [0, global_batch))
  record            = permutation(seed, epoch)[g mod epoch_length]   (drop-remainder epochs)

Process p makes only rows [p * local, (p + 1) * local) of each global batch, so processes read
disjoint records, and the global batch does not depend on how many processes share it. The
augmentation is keyed to the global batch too: a per-record transform (decoded images) draws
from np.random.default_rng([seed, g, 7]); a batch transform (the embedded arrays,
`transforms.ArrayTrainTransform`) draws for the whole global batch from (seed, step) and keeps
its rows. Resuming at step s slices the MapDataset at s: no iterator state to checkpoint, exact
order. Batches are made in grain's read threads (`data.num_threads`) and, with
`data.num_workers` > 0, in grain worker processes (`mp_prefetch`), each taking whole batches,
so the order is kept.

Why the permutation and the rows are computed here rather than by grain's per-element
`shuffle` / `batch` / `slice`: those, making only the record indices, give several times fewer
batches per second than this makes whole embedded batches (experiments/data_batching/); grain's
index shuffle is one call per record. One NumPy permutation per epoch and one call per batch
keep the embedded sets' ~10 ms LeNet steps free of input cost, and cost nothing next to
decoding for the image sources.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from cnn_jax.data.sources import Records
from cnn_jax.errors import UserError

Batch = dict[str, np.ndarray]

# An upper bound on steps: the train MapDataset is "infinite" (sliced from the resume step).
_MAX_STEPS = 2**40


class PerRecord:
  """A per-record augmentation `transform(image, rng)` applied row by row; the generator of the
  row at global position g is np.random.default_rng([seed, g, 7])."""

  def __init__(self, transform: Callable[[object, np.random.Generator], np.ndarray]):
    self.transform = transform

  def train_batch(self, records: Records, indices: np.ndarray, *, seed: int, step: int,
                  first_row: int, global_batch_size: int) -> Batch:
    first = step * global_batch_size + first_row
    outputs, labels = [], []
    for j, index in enumerate(indices):
      def transform(image, position=first + j):
        return self.transform(image, np.random.default_rng([seed, position, 7]))
      if hasattr(records, "load"):  # sources.images.RecordLoader: the transform decodes.
        output, label = records.load(int(index), transform)
      else:
        image, label = records[int(index)]
        output = transform(image)
      outputs.append(output)
      labels.append(label)
    labels = np.asarray(labels, np.int32)
    if isinstance(outputs[0], tuple):  # uint8 images + erasing boxes, normalised on device
      images, boxes = zip(*outputs)
      return {"image": np.stack(images), "erase_box": np.stack(boxes), "label": labels}
    return {"image": np.stack(outputs).astype(np.float32, copy=False), "label": labels}


class _TrainBatchFn:
  """step -> this process's rows of the global batch at that step (picklable for workers)."""

  def __init__(self, records: Records, transform, *, global_batch_size: int,
               local_batch_size: int, process_index: int, steps_per_epoch: int, seed: int,
               crop_on_device: bool = False):
    self.records = records
    self.transform = transform
    self.rows_method = "train_crops" if crop_on_device else "train_batch"
    self.global_batch_size = global_batch_size
    self.local_batch_size = local_batch_size
    self.first_row = process_index * local_batch_size
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
      perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.records))
      self._permutations = {epoch: perm}  # Keep one epoch: memory stays flat.
    return perm

  def __call__(self, step: int) -> Batch:
    # A global batch lies in one epoch (epochs are whole batches), so its rows do too.
    epoch, within = divmod(step * self.global_batch_size + self.first_row, self.epoch_length)
    indices = self.permutation(epoch)[within:within + self.local_batch_size]
    return getattr(self.transform, self.rows_method)(
        self.records, indices, seed=self.seed, step=step, first_row=self.first_row,
        global_batch_size=self.global_batch_size)


class _EvalBatchFn:
  def __init__(self, records: Records, transform, image_shape, *, global_batch_size: int,
               local_batch_size: int, process_index: int):
    self.records = records
    self.transform = transform
    self.image_shape = tuple(image_shape)
    self.global_batch_size = global_batch_size
    self.local_batch_size = local_batch_size
    self.process_index = process_index

  def __call__(self, b: int) -> Batch:
    first = b * self.global_batch_size + self.process_index * self.local_batch_size
    n = len(self.records)
    images = np.zeros((self.local_batch_size, *self.image_shape), np.float32)
    labels = np.zeros((self.local_batch_size,), np.int32)
    mask = np.zeros((self.local_batch_size,), np.float32)
    for j in range(self.local_batch_size):
      if first + j < n:
        image, labels[j] = self.records[first + j]
        images[j] = self.transform(image)
        mask[j] = 1.0
    return {"image": images, "label": labels, "mask": mask}


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
  # num_threads=0: no read threads; the batches are made in the iterating thread as it asks
  # for them (grain's advice for data already in memory: no GIL contention).
  return grain.ReadOptions(num_threads=max(0, num_threads), prefetch_buffer_size=max(1, prefetch))


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
  if global_batch_size < 1:
    raise UserError(f"{field}={global_batch_size} must be at least 1")
  if num_records is not None and global_batch_size > num_records:
    raise UserError(f"{field}={global_batch_size} is larger than the {num_records} "
                    "training images")
  if global_batch_size % process_count:
    raise UserError(f"{field}={global_batch_size} is not divisible by the "
                    f"{process_count} processes")
  return global_batch_size // process_count


class TrainBatches:
  """This process's rows of the global training batch at each step: `batch(step)`,
  `iterate(start_step)`.

  `records`: the source's training records; `transform`: a per-record augmentation
  `transform(image, rng)` -> normalised float32 HWC array (wrapped in `PerRecord`), or an object
  whose `train_batch(records, indices, *, seed, step, first_row, global_batch_size)` makes the
  rows at once (`transforms.ArrayTrainTransform`).

  `crop_on_device` (such a transform's `train_crops`; other transforms ignore it): a batch is
  the rows' indices and shifts into `resident()`'s arrays, which the train step cuts its images
  from (`mixing.cut_crops`).
  """

  def __init__(self, records: Records, transform: Any, *, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, num_workers: int = 0,
               num_threads: int = 1, prefetch_batches: int = 2, crop_on_device: bool = False):
    self.local_batch_size = check_global_batch("data.batch_size", global_batch_size,
                                               process_count, len(records))
    # Only the in-memory sets have crops the step can cut; decoded images stay on the host, so
    # a config that sets it (make train's) still runs on another source.
    crop_on_device = crop_on_device and hasattr(transform, "train_crops")
    self.crop_on_device = crop_on_device
    self.records = records
    self.transform = transform if hasattr(transform, "train_batch") else PerRecord(transform)
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = len(records) // global_batch_size
    self.num_workers, self.num_threads = num_workers, num_threads
    self.prefetch_batches = prefetch_batches
    self._fn = _TrainBatchFn(
        records, self.transform, global_batch_size=global_batch_size,
        local_batch_size=self.local_batch_size, process_index=process_index,
        steps_per_epoch=self.steps_per_epoch, seed=seed, crop_on_device=crop_on_device)
    self.dataset = grain.MapDataset.range(_MAX_STEPS).map(self._fn)

  def batch(self, step: int) -> Batch:
    return self._fn(step)

  def resident(self) -> Batch:
    """Arrays the train step reads beside each batch, placed on every device once: the set
    its crops are cut from with `crop_on_device`, else none."""
    return self.transform.resident(self.records) if self.crop_on_device else {}

  def iterate(self, start_step: int) -> Iterator[Batch]:
    return _iterate(self.dataset[start_step:], num_workers=self.num_workers,
                    num_threads=self.num_threads, prefetch_batches=self.prefetch_batches)


class EvalBatches:
  """The whole eval split in fixed-size batches; the last is padded (zeros) and masked out.
  `transform(image)` -> normalised float32 array of `image_shape`."""

  def __init__(self, records: Records, transform: Any, image_shape: tuple[int, ...], *,
               global_batch_size: int, process_index: int = 0, process_count: int = 1,
               num_workers: int = 0, num_threads: int = 1, prefetch_batches: int = 2):
    self.local_batch_size = check_global_batch("data.eval_batch_size", global_batch_size,
                                               process_count)
    self.records = records
    self.global_batch_size = global_batch_size
    self.num_batches = -(-len(records) // global_batch_size)
    self.num_workers, self.num_threads = num_workers, num_threads
    self.prefetch_batches = prefetch_batches
    fn = _EvalBatchFn(records, transform, image_shape, global_batch_size=global_batch_size,
                      local_batch_size=self.local_batch_size, process_index=process_index)
    self.dataset = grain.MapDataset.range(self.num_batches).map(fn)

  def __iter__(self) -> Iterator[Batch]:
    return _iterate(self.dataset, num_workers=self.num_workers, num_threads=self.num_threads,
                    prefetch_batches=self.prefetch_batches)


def prefetch_to_device(batches: Iterator[Batch], put: Callable[[Batch], Any], size: int = 2
                       ) -> Iterator[Any]:
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
