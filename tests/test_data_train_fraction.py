"""data.train_fraction: a deterministic, nested, class-stratified subset of the train split."""

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data.sources import arrays, embedded
from cnn_jax.errors import UserError
from helpers import load_config


def _labels() -> np.ndarray:
  # Unbalanced classes (300 / 120 / 30), shuffled: proportions must survive the subset.
  labels = np.repeat(np.arange(3), [300, 120, 30])
  return np.random.default_rng(7).permutation(labels)


def test_subset_sizes_balance_nesting_and_determinism():
  labels = _labels()
  subsets = {f: arrays.subset_indices(labels, f, seed=0) for f in (0.1, 0.25, 0.5, 1.0)}
  for f, rows in subsets.items():
    assert len(np.unique(rows)) == len(rows)
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=3),
                                  np.round(f * np.array([300, 120, 30])))
  np.testing.assert_array_equal(subsets[1.0], np.arange(len(labels)))
  assert set(subsets[0.1]) < set(subsets[0.25]) < set(subsets[0.5]) < set(subsets[1.0])
  np.testing.assert_array_equal(arrays.subset_indices(labels, 0.25, seed=0), subsets[0.25])
  assert not np.array_equal(arrays.subset_indices(labels, 0.25, seed=1), subsets[0.25])
  # Every class keeps at least one image, however small the fraction.
  assert set(labels[arrays.subset_indices(labels, 0.001, seed=0)]) == {0, 1, 2}
  with pytest.raises(UserError, match="train_fraction"):
    arrays.subset_indices(labels, 0.0, seed=0)


def test_embedded_train_fraction_cuts_train_only_and_uses_its_statistics():
  full = embedded.load_arrays(load_config("lenet5_mnist").data)
  config = load_config("lenet5_mnist", **{"data.train_fraction": 0.1})
  train, evaluation, info = data.create_datasets(config)
  assert info.num_train == 400 and info.num_eval == 1000
  np.testing.assert_array_equal(np.bincount(train.records.labels), [40] * 10)
  np.testing.assert_array_equal(evaluation.records.labels, full.test.labels)
  # The subset's rows are rows of the full train split, and its normalisation is its own.
  rows = arrays.subset_indices(full.train.labels, 0.1, seed=config.data.split_seed)
  np.testing.assert_array_equal(train.records.images, full.train.images[rows])
  np.testing.assert_allclose(train.transform.mean, train.records.images.mean(axis=(0, 1, 2)),
                             rtol=1e-5)
  assert not np.allclose(train.transform.mean, full.mean, rtol=1e-6)


def test_train_fraction_with_tfds_points_to_the_split_syntax():
  config = load_config("lenet5_mnist", **{"data.source": "tfds", "data.name": "cifar10",
                                          "data.train_fraction": 0.5})
  with pytest.raises(UserError, match=r"train\[:10%\]"):
    data.create_datasets(config)


def test_image_folder_train_fraction_keeps_a_stratified_subset_of_the_files(tmp_path):
  from PIL import Image
  for split, per_class in (("train", 10), ("val", 2)):
    for k in range(2):
      d = tmp_path / split / f"class_{k}"
      d.mkdir(parents=True)
      for i in range(per_class):
        Image.new("RGB", (8, 8), (k * 100, 0, 0)).save(d / f"{i}.png")
  fields = {"data.source": "imagefolder", "data.name": "tiny", "data.data_dir": str(tmp_path),
            "data.train_split": "train", "data.eval_split": "val", "data.image_size": 8,
            "data.augment": "none", "data.batch_size": 4, "data.num_threads": 1}
  full, _, _ = data.create_datasets(load_config("lenet5_mnist", **fields))
  half, _, info = data.create_datasets(
      load_config("lenet5_mnist", **fields, **{"data.train_fraction": 0.5}))
  assert info.num_train == 10 and info.num_eval == 4
  np.testing.assert_array_equal(np.bincount(half.records.source.labels), [5, 5])
  assert set(half.records.source.paths) < set(full.records.source.paths)
