"""The in-memory sets that need no download (`data.source = "embedded"`), by `data.name`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from cnn_jax.data.sources import digits, long_range
from cnn_jax.data.sources.arrays import ArrayDataset, train_subset
from cnn_jax.data.sources.base import Splits
from cnn_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class FileLayout:
  """Where an image file goes in an embedded set's frame, as the set placed its own images
  (`predict` on a run trained on the set): resized whole to `side` x `side` pixels, each pixel
  repeated `repeat` times along both axes, then `padding` (before, after) zeros on both."""
  side: int
  repeat: int = 1
  padding: tuple[int, int] = (0, 0)

  @property
  def size(self) -> int:
    return self.side * self.repeat + sum(self.padding)


@dataclasses.dataclass(frozen=True)
class EmbeddedSet:
  load: Callable[[ml_collections.ConfigDict], ArrayDataset]
  file_layout: Callable[[ml_collections.ConfigDict], FileLayout]


def _digits_upscale(data_config: ml_collections.ConfigDict) -> int:
  if data_config.image_size % digits.DIGITS_SIDE:
    raise UserError(f"data.image_size={data_config.image_size} must be a multiple of "
                    f"{digits.DIGITS_SIDE} for the {digits.DIGITS_SIDE}x{digits.DIGITS_SIDE} "
                    "digits")
  return data_config.image_size // digits.DIGITS_SIDE


EMBEDDED: dict[str, EmbeddedSet] = {
    "mnist_subset": EmbeddedSet(
        load=lambda data_config: digits.mnist_subset(
            num_test=data_config.num_test, split_seed=data_config.split_seed,
            pad_to=data_config.image_size),
        file_layout=lambda data_config: FileLayout(
            digits.MNIST_SIDE, padding=digits.mnist_padding(data_config.image_size))),
    "digits": EmbeddedSet(
        load=lambda data_config: digits.sklearn_digits(
            num_test=data_config.num_test, split_seed=data_config.split_seed,
            upscale=_digits_upscale(data_config)),
        file_layout=lambda data_config: FileLayout(digits.DIGITS_SIDE,
                                                   repeat=_digits_upscale(data_config))),
    # A file is a whole canvas.
    "long_range": EmbeddedSet(
        load=long_range.long_range_dataset,
        file_layout=lambda data_config: FileLayout(data_config.image_size)),
}


def _embedded_set(data_config: ml_collections.ConfigDict) -> EmbeddedSet:
  if data_config.name not in EMBEDDED:
    raise UserError(f"unknown data set {data_config.name!r}; known: {', '.join(sorted(EMBEDDED))}"
                    " (or set data.source to tfds, imagefolder or synthetic)")
  return EMBEDDED[data_config.name]


def load_arrays(data_config: ml_collections.ConfigDict) -> ArrayDataset:
  """The embedded set `data.name`, its train split cut to `data.train_fraction`."""
  return train_subset(_embedded_set(data_config).load(data_config), data_config.train_fraction,
                      data_config.split_seed)


def file_layout(data_config: ml_collections.ConfigDict) -> FileLayout:
  """How an image file is placed in the frame of the embedded set `data.name`."""
  return _embedded_set(data_config).file_layout(data_config)


def create(config: ml_collections.ConfigDict) -> Splits:
  arrays = load_arrays(config.data)
  return Splits(arrays.train, arrays.test, arrays.num_classes, (arrays.mean, arrays.std))
