"""Input pipelines: `create_datasets(config)` -> train batches, eval batches, dataset info.

`config.data.source` picks the source (`sources.create_source`, one module per source in
data/sources/): `embedded` (in-memory digits, `TrainBatches`), or `tfds` / `imagefolder` /
`synthetic` (grain pipelines over random-access records with decoding and augmentation in
worker threads/processes, `pipeline.RecordTrainBatches`).
Training batches are a pure function of (seed, step): the batch at step s is the same
whether the run started at 0 or resumed at s, so exact resume needs no iterator state in
the checkpoint. Each process builds only its own rows of the global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from cnn_jax.data import mixing, pipeline, sources, transforms
from cnn_jax.data.pipeline import prefetch_to_device
from cnn_jax.data.sources.arrays import ArraySplit

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int


def _random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Translates each image by up to +-max_shift px (zero fill): the LeNet-era augmentation."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  offsets = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
  out = np.empty_like(images)
  for i, (dy, dx) in enumerate(offsets):
    out[i] = padded[i, dy:dy + h, dx:dx + w]
  return out


class TrainBatches:
  """Shuffled, augmented, normalised training batches indexed by step (drop-remainder epochs)."""

  def __init__(self, split: ArraySplit, *, global_batch_size: int, seed: int, max_shift: int,
               mean: tuple[float, ...], std: tuple[float, ...],
               process_index: int = 0, process_count: int = 1):
    self.local_batch_size = pipeline.check_global_batch("data.batch_size", global_batch_size,
                                                        process_count, len(split))
    self.split = split
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.max_shift = max_shift
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self.process_index = process_index
    self.steps_per_epoch = len(split) // global_batch_size

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.split))

  def batch(self, step: int) -> Batch:
    epoch, within = divmod(step, self.steps_per_epoch)
    rows = self._epoch_permutation(epoch)[
        within * self.global_batch_size:(within + 1) * self.global_batch_size]
    images = self.split.images[rows]
    if self.max_shift:
      # Drawn for the global batch, then sliced: the augmentation does not depend on how
      # many processes share the batch.
      images = _random_shift(images, self.max_shift,
                             np.random.default_rng([self.seed, step, 1]))
    lo = self.process_index * self.local_batch_size
    local = slice(lo, lo + self.local_batch_size)
    images = (images[local] - self.mean) / self.std
    return {"image": images.astype(np.float32), "label": self.split.labels[rows][local]}

  def iterate(self, start_step: int) -> Iterator[Batch]:
    step = start_step
    while True:
      yield self.batch(step)
      step += 1


class EvalBatches:
  """The whole eval split in fixed-size batches; the last one is padded and masked out."""

  def __init__(self, split: ArraySplit, *, global_batch_size: int, mean: tuple[float, ...],
               std: tuple[float, ...], process_index: int = 0, process_count: int = 1):
    self.local_batch_size = pipeline.check_global_batch("data.eval_batch_size",
                                                        global_batch_size, process_count)
    self.split = split
    self.global_batch_size = global_batch_size
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self.process_index = process_index
    self.num_batches = -(-len(split) // global_batch_size)

  def __iter__(self) -> Iterator[Batch]:
    n = len(self.split)
    for b in range(self.num_batches):
      rows = np.arange(b * self.global_batch_size, (b + 1) * self.global_batch_size)
      lo = self.process_index * self.local_batch_size
      rows = rows[lo:lo + self.local_batch_size]
      valid = rows < n
      rows = np.where(valid, rows, 0)
      images = (self.split.images[rows] - self.mean) / self.std
      yield {"image": images.astype(np.float32), "label": self.split.labels[rows],
             "mask": valid.astype(np.float32)}


def _create_embedded(config: ml_collections.ConfigDict, splits: sources.Splits
                     ) -> tuple[TrainBatches, EvalBatches, DatasetInfo]:
  data_config = config.data
  mean, std = splits.statistics
  common = dict(mean=mean, std=std, process_index=jax.process_index(),
                process_count=jax.process_count())
  train = TrainBatches(splits.train, global_batch_size=data_config.batch_size,
                       seed=config.seed, max_shift=data_config.max_shift, **common)
  evaluation = EvalBatches(splits.eval, global_batch_size=data_config.eval_batch_size, **common)
  info = DatasetInfo(name=data_config.name, num_classes=splits.num_classes,
                     image_shape=tuple(splits.train.images.shape[1:]),
                     num_train=len(splits.train), num_eval=len(splits.eval))
  return train, evaluation, info


def _create_records(config: ml_collections.ConfigDict, splits: sources.Splits):
  data_config = config.data
  image_shape = (data_config.image_size, data_config.image_size, data_config.channels)
  common = dict(channels=data_config.channels, on_corrupt=data_config.on_corrupt,
                process_index=jax.process_index(), process_count=jax.process_count(),
                num_workers=data_config.num_workers, num_threads=data_config.num_threads,
                prefetch_batches=data_config.prefetch_batches)
  train = pipeline.RecordTrainBatches(
      splits.train, transforms.TrainTransform(data_config),
      global_batch_size=data_config.batch_size, seed=config.seed, **common)
  evaluation = pipeline.RecordEvalBatches(
      splits.eval, transforms.EvalTransform(data_config), image_shape,
      global_batch_size=data_config.eval_batch_size, **common)
  info = DatasetInfo(name=data_config.name, num_classes=splits.num_classes,
                     image_shape=image_shape, num_train=len(splits.train),
                     num_eval=len(splits.eval))
  return train, evaluation, info


def create_datasets(config: ml_collections.ConfigDict):
  """Builds this process's train and eval pipelines from `config.data` and `config.seed`.

  Returns (train, eval, info): `train.batch(step)` / `train.iterate(start_step)` give
  host-local {"image": float32 NHWC, "label": int32} batches; iterating `eval` gives fixed-size
  {"image", "label", "mask"} batches; `info` is a DatasetInfo.
  """
  splits = sources.create_source(config)
  if splits.statistics is not None:
    return _create_embedded(config, splits)
  return _create_records(config, splits)
