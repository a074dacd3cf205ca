"""In-memory data sets: splits of float images and integer labels, the fixed stratified
train/test split, and the class-stratified training subsets of data.train_fraction."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnn_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split held in memory: images NHWC float32 in [0, 1], labels int32."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  train: ArraySplit
  test: ArraySplit
  num_classes: int
  # Per-channel statistics of the train split, for normalisation.
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Index arrays (train, test) with the test split drawn evenly from every class."""
  rng = np.random.default_rng(seed)
  classes = np.unique(labels)
  per_class = num_test // len(classes)
  if per_class * len(classes) != num_test:
    raise UserError(f"num_test={num_test} must be a multiple of the {len(classes)} classes")
  test_idx = []
  for c in classes:
    idx = np.flatnonzero(labels == c)
    if len(idx) <= per_class:
      raise UserError(f"class {c} has {len(idx)} images, too few for {per_class} test images")
    test_idx.append(rng.choice(idx, per_class, replace=False))
  test = np.sort(np.concatenate(test_idx))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def subset_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a class-stratified `fraction` of `labels` (data.train_fraction).

  Each class keeps round(fraction x its size) images (at least one), the first ones of a fixed
  per-class permutation drawn from `seed`: the subset is deterministic and nested (the 10 %
  subset lies inside the 25 % one) and keeps the class proportions.
  """
  if not 0.0 < fraction <= 1.0:
    raise UserError(f"data.train_fraction={fraction} must be in (0, 1]")
  if fraction == 1.0:
    return np.arange(len(labels))
  # Stream 1 of split_seed: independent of the train/test draw, which uses the bare seed.
  rng = np.random.default_rng([seed, 1])
  keep = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    keep.append(idx[:max(1, int(round(fraction * len(idx))))])
  return np.sort(np.concatenate(keep))


def train_subset(dataset: ArrayDataset, fraction: float, seed: int) -> ArrayDataset:
  """`dataset` with its train split cut to `subset_indices`; normalisation statistics are those
  of the subset (the images a run trains on), the test split is unchanged."""
  if fraction == 1.0:
    return dataset
  rows = subset_indices(dataset.train.labels, fraction, seed)
  train = ArraySplit(dataset.train.images[rows], dataset.train.labels[rows])
  mean = tuple(float(m) for m in train.images.mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in train.images.std(axis=(0, 1, 2)))
  return dataclasses.replace(dataset, train=train, mean=mean, std=std)


def make_dataset(images: np.ndarray, labels: np.ndarray, num_test: int, seed: int) -> ArrayDataset:
  train_idx, test_idx = stratified_split(labels, num_test, seed)
  train = ArraySplit(images[train_idx], labels[train_idx].astype(np.int32))
  test = ArraySplit(images[test_idx], labels[test_idx].astype(np.int32))
  mean = tuple(float(m) for m in train.images.mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in train.images.std(axis=(0, 1, 2)))
  return ArrayDataset(train, test, int(labels.max()) + 1, mean, std)
