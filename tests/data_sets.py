"""The small image sets the data tests build and read back: solid-grey images whose grey level
is their label (`solid_value`), so any batch says which images it holds; the same set as a TFDS
array_record data set on disk."""

from __future__ import annotations

import functools

import ml_collections
import numpy as np
from PIL import Image

from cnn_jax import config as base
from helpers import temporary_files_in

NUM_CLASSES = 4
TFDS_NAME = "cnn_jax_test_shapes"


def solid_value(label: int) -> int:
  """Every test image of class k is filled with this grey level: images carry their label."""
  return 40 * label + 20


def make_config(**data_fields) -> ml_collections.ConfigDict:
  config = base.get_config()
  config.data.image_size = 16
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.data.mean = (0.0, 0.0, 0.0)
  config.data.std = (1.0, 1.0, 1.0)
  config.data.augment = "none"
  config.data.crop_pct = 1.0
  config.data.num_threads = 2
  for key, value in data_fields.items():
    config.data[key] = value
  return config


def labels_from_images(images: np.ndarray) -> np.ndarray:
  """Inverse of solid_value, from normalised (mean 0, std 1) batch images."""
  values = images.reshape(len(images), -1).mean(axis=1) * 255
  return np.round((values - 20) / 40).astype(np.int32)


@functools.cache
def _tfds_test_builder():
  """The TFDS builder class of the test set, made once: TFDS registers builder classes by
  name, once per process."""
  import tensorflow_datasets as tfds

  class CnnJaxTestShapes(tfds.core.GeneratorBasedBuilder):
    """Solid-grey images of varied sizes; class k has grey level 40 k + 20."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(40, 0), "test": self._generate_examples(10, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        label = i % NUM_CLASSES
        h, w = (int(v) for v in rng.integers(12, 40, size=2))
        image = np.full((h, w, 3), solid_value(label), np.uint8)
        # Encoded here with PIL: TFDS needs TensorFlow to encode numpy arrays.
        yield i, {"image": Image.fromarray(image), "label": label}

  return CnnJaxTestShapes


def prepare_tfds_test_set(tmp_path_factory) -> str:
  """The TFDS set TFDS_NAME (40 train / 10 test images, array_record) in a new data_dir."""
  root = str(tmp_path_factory.mktemp("tfds"))
  with temporary_files_in(tmp_path_factory.mktemp("tfds_scratch")):
    _tfds_test_builder()(data_dir=root, file_format="array_record").download_and_prepare()
  return root
