"""The long-range task generator: labels, the exact distance knob, unseen test digits, seeds."""

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data.sources import embedded, long_range
from cnn_jax.data.sources.digits import mnist_subset
from cnn_jax.errors import UserError
from helpers import load_config


@pytest.fixture(scope="module")
def mnist():
  return mnist_subset(num_test=1000, split_seed=0, pad_to=28)


@pytest.fixture(scope="module")
def digits(mnist):
  return long_range.shrink_digits(mnist.train.images[::6], 14), mnist.train.labels[::6]


def _make(digits, **kw):
  images, labels = digits
  options = dict(num_images=300, canvas_size=64, distance=30, task="same", seed=0)
  return long_range.make_pair_canvases(images, labels, **{**options, **kw})


@pytest.mark.parametrize("distance", [14, 25, 30, 48, 50])
def test_centres_are_exactly_the_distance_apart_and_the_digits_sit_there(digits, distance):
  out = _make(digits, distance=distance)
  gaps = out.centres[:, 1] - out.centres[:, 0]
  np.testing.assert_array_equal(np.hypot(gaps[:, 0], gaps[:, 1]), distance)
  # Random placement: many positions and, where the circle has them, several directions.
  assert len({tuple(c) for c in out.centres[:, 0]}) > 100
  directions = {tuple(g) for g in gaps}
  assert len(directions) >= 4 and (len(directions) > 4) == (distance in (25, 30, 50))
  images, _ = digits
  s = images.shape[1]
  for canvas, centres, rows in zip(out.images[:50], out.centres[:50], out.digit_index[:50]):
    corners = (centres - s / 2).astype(int)
    assert corners.min() >= 0 and corners.max() <= 64 - s
    if distance >= s:  # no overlap: each digit is copied unchanged, nothing else is drawn
      painted = np.zeros_like(canvas)
      for (y, x), row in zip(corners, rows):
        np.testing.assert_array_equal(canvas[y:y + s, x:x + s], images[row])
        painted[y:y + s, x:x + s] = 1
      assert canvas[painted == 0].max() == 0


def test_same_digit_labels_are_right_and_balanced(digits):
  out = _make(digits, num_images=1000)
  _, labels = digits
  np.testing.assert_array_equal(out.digit_labels, labels[out.digit_index])
  np.testing.assert_array_equal(out.labels, out.digit_labels[:, 0] == out.digit_labels[:, 1])
  assert 0.45 < out.labels.mean() < 0.55
  assert (out.digit_index[:, 0] != out.digit_index[:, 1]).all()  # two different images
  assert len(np.unique(out.digit_labels[out.labels == 0], axis=0)) == 90  # every unequal pair


def test_digit_classes_restricts_the_numbers(digits):
  out = _make(digits, num_images=400, digit_classes=2)
  assert set(out.digit_labels.ravel()) == {0, 1}
  np.testing.assert_array_equal(out.labels, out.digit_labels[:, 0] == out.digit_labels[:, 1])
  out = _make(digits, task="sum_mod10", num_images=400, digit_classes=3)
  assert set(out.digit_labels.ravel()) == {0, 1, 2}
  assert set(out.labels) == {0, 1, 2, 3, 4}
  with pytest.raises(UserError, match="digit_classes"):
    _make(digits, digit_classes=1)


def test_sum_mod_10_labels_are_right(digits):
  out = _make(digits, task="sum_mod10", num_images=1000)
  _, labels = digits
  np.testing.assert_array_equal(out.digit_labels, labels[out.digit_index])
  np.testing.assert_array_equal(out.labels, out.digit_labels.sum(axis=1) % 10)
  assert set(out.labels) == set(range(10))


def test_generation_is_a_function_of_the_seed(digits):
  a, b, c = _make(digits, seed=3), _make(digits, seed=3), _make(digits, seed=4)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert not np.array_equal(a.images, c.images)


def test_distances_that_do_not_fit_and_bad_options_are_user_errors(digits):
  with pytest.raises(UserError, match="does not fit"):
    _make(digits, distance=63)  # axis offsets stop at 64 - 14 = 50; 63^2 has no diagonal split
  with pytest.raises(UserError, match="task"):
    _make(digits, task="xor")
  with pytest.raises(UserError, match="divide 28"):
    long_range.shrink_digits(np.zeros((1, 28, 28, 1), np.float32), 10)


def test_shrink_digits_averages_boxes():
  image = np.arange(28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
  small = long_range.shrink_digits(image, 14)
  assert small.shape == (1, 14, 14, 1)
  assert small[0, 0, 0, 0] == np.mean([0, 1, 28, 29])


def test_config_source_uses_unseen_test_digits(mnist):
  config = load_config("longrange", **{"data.long_range.num_train": 200,
                                       "data.long_range.num_eval": 100})
  arrays = embedded.load_arrays(config.data)
  assert arrays.image_shape == (64, 64, 1) and arrays.num_classes == 2
  assert len(arrays.train) == 200 and len(arrays.test) == 100
  # Every digit on a test canvas is one of the MNIST subset's test images, none a train one.
  test_digits = long_range.shrink_digits(mnist.test.images, 14).reshape(1000, -1)
  train_digits = long_range.shrink_digits(mnist.train.images, 14).reshape(4000, -1)
  canvas = arrays.test.images[0, ..., 0]
  ys, xs = np.nonzero(canvas)
  found = []
  for y in range(64 - 14 + 1):
    for x in range(64 - 14 + 1):
      patch = canvas[y:y + 14, x:x + 14].reshape(-1)
      if patch.any() and np.isclose(patch.sum(), test_digits.sum(axis=1)).any():
        if (np.abs(test_digits - patch).max(axis=1) == 0).any():
          found.append((y, x))
  assert len(found) == 2
  for y, x in found:
    patch = canvas[y:y + 14, x:x + 14].reshape(1, -1)
    assert not (np.abs(train_digits - patch).max(axis=1) == 0).any()
  assert ys.size and xs.size


def test_datasets_from_config_train_batches():
  config = load_config("longrange", **{"data.long_range.num_train": 256,
                                       "data.long_range.num_eval": 100,
                                       "data.long_range.distance": 40})
  train, evaluation, info = data.create_datasets(config)
  assert info.name == "long_range" and info.num_classes == 2
  batch = train.batch(0)
  assert batch["image"].shape == (64, 64, 64, 1) and batch["image"].dtype == np.float32
  assert set(np.unique(batch["label"])) <= {0, 1}
  assert abs(float(batch["image"].mean())) < 0.5  # normalised with the train statistics
