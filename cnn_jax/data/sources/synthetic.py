"""Random images of any shape and number of classes, for benchmarks: `data.source = "synthetic"`
with the sizes in `data.synthetic`."""

from __future__ import annotations

import ml_collections
import numpy as np

from cnn_jax.data.sources.base import Splits
from cnn_jax.errors import UserError


def create(config: ml_collections.ConfigDict) -> Splits:
  data_config = config.data
  if data_config.train_fraction != 1.0:
    raise UserError("data.train_fraction is for the embedded and imagefolder sources; with "
                    "synthetic set data.synthetic.num_train")
  syn = data_config.synthetic
  shape = (data_config.image_size, data_config.image_size, data_config.channels)
  train = SyntheticSource(syn.num_train, shape, syn.num_classes, config.seed)
  evaluation = SyntheticSource(syn.num_eval, shape, syn.num_classes, config.seed + 1)
  return Splits(train, evaluation, syn.num_classes)



class SyntheticSource:
  """Random uint8 images of any shape, a pure function of (seed, index): for benchmarks."""

  def __init__(self, num_examples: int, shape: tuple[int, int, int], num_classes: int,
               seed: int):
    if num_examples <= 0:
      raise UserError(f"synthetic data needs a positive number of examples, got {num_examples}")
    if num_classes <= 0:
      raise UserError(f"data.synthetic.num_classes={num_classes} must be positive")
    self.num_examples = num_examples
    self.shape = tuple(shape)
    self.num_classes = num_classes
    self.seed = seed
    self.name = "synthetic"

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int):
    rng = np.random.default_rng([self.seed, int(index)])
    image = rng.integers(0, 256, self.shape, dtype=np.uint8)
    return image, int(rng.integers(self.num_classes))

  def describe(self, index: int) -> str:
    return f"synthetic record {index}"
