"""The in-memory sets that need no download (`data.source = "embedded"`), by `data.name`."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from cnn_jax.data.sources import digits, long_range
from cnn_jax.data.sources.arrays import ArrayDataset, train_subset
from cnn_jax.data.sources.base import Splits
from cnn_jax.errors import UserError


def _digits(data_config: ml_collections.ConfigDict) -> ArrayDataset:
  if data_config.image_size % 8:
    raise UserError(f"data.image_size={data_config.image_size} must be a multiple of 8 "
                    "for the 8x8 digits")
  return digits.sklearn_digits(num_test=data_config.num_test, split_seed=data_config.split_seed,
                               upscale=data_config.image_size // 8)


EMBEDDED: dict[str, Callable[[ml_collections.ConfigDict], ArrayDataset]] = {
    "mnist_subset": lambda data_config: digits.mnist_subset(
        num_test=data_config.num_test, split_seed=data_config.split_seed,
        pad_to=data_config.image_size),
    "digits": _digits,
    "long_range": long_range.long_range_dataset,
}


def load_arrays(data_config: ml_collections.ConfigDict) -> ArrayDataset:
  """The embedded set `data.name`, its train split cut to `data.train_fraction`."""
  if data_config.name not in EMBEDDED:
    raise UserError(f"unknown data set {data_config.name!r}; known: {', '.join(sorted(EMBEDDED))}"
                    " (or set data.source to tfds, imagefolder or synthetic)")
  return train_subset(EMBEDDED[data_config.name](data_config), data_config.train_fraction,
                      data_config.split_seed)


def create(config: ml_collections.ConfigDict) -> Splits:
  arrays = load_arrays(config.data)
  return Splits(arrays.train, arrays.test, arrays.num_classes, (arrays.mean, arrays.std))
