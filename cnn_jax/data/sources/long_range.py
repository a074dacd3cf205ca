"""A long-range-dependency task family: two MNIST digits a fixed distance apart on a canvas.

The label depends only on a relation between the two digits, never on either one alone:

  task="same"      2 classes: 1 if both digits show the same number, else 0 (balanced 50/50).
  task="sum_mod10" 10 classes: (a + b) mod 10 of the two numbers.

`digit_classes` = k < 10 draws only the numbers 0..k-1 (k = 2: "same" is an XOR of two
binary local features, the easiest relation to learn that no single digit reveals).

`distance` is the exact Euclidean distance in pixels between the two digit centres: the offset
(dy, dx) is drawn from the integer points with dy^2 + dx^2 = distance^2 that fit on the canvas
(the four axis directions always, plus e.g. (24, 32) for distance 40), and the position of the
pair is otherwise uniform. A network has to relate two regions `distance` px apart, so sweeping
`distance` at a fixed canvas size tests whether a model's (effective) receptive field reaches;
a distance of about one digit size is the local control.

Digits come from the embedded MNIST subset (`digits.mnist_subset`): training canvases use its
train digits and test canvases its test digits, so every test digit is unseen. Digits are
shrunk from 28 px by box averaging to `digit_size` (which must divide 28) and drawn onto a
black canvas with a pixel-wise max, so the two may touch or overlap only when the distance
is below the digit size. Everything is a function of the seeds: the same config gives the same
images, bit for bit.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from cnn_jax.data.sources.arrays import ArrayDataset, ArraySplit
from cnn_jax.data.sources.digits import mnist_subset
from cnn_jax.errors import UserError

TASKS = {"same": 2, "sum_mod10": 10}


@dataclasses.dataclass(frozen=True)
class PairCanvases:
  """One generated split with what made it: per image the two digits and their centres."""
  images: np.ndarray         # (N, canvas, canvas, 1) float32 in [0, 1]
  labels: np.ndarray         # (N,) int32, the task's label
  digit_labels: np.ndarray   # (N, 2) int32, the numbers shown
  digit_index: np.ndarray    # (N, 2) int, rows of the source digit array
  centres: np.ndarray        # (N, 2, 2) float (y, x) of each digit's centre, in px


def shrink_digits(images: np.ndarray, digit_size: int) -> np.ndarray:
  """(N, 28, 28, 1) -> (N, s, s, 1) by averaging k x k boxes, k = 28 / s."""
  if digit_size < 1 or 28 % digit_size:
    raise UserError(f"data.long_range.digit_size={digit_size} must divide 28 (28, 14, 7 or 4)")
  k = 28 // digit_size
  n = images.shape[0]
  return images.reshape(n, digit_size, k, digit_size, k, 1).mean(axis=(2, 4))


def pair_offsets(distance: int, max_offset: int) -> np.ndarray:
  """All integer (dy, dx) with dy^2 + dx^2 == distance^2 and |dy|, |dx| <= max_offset."""
  r = np.arange(-distance, distance + 1)
  dy, dx = np.meshgrid(r, r, indexing="ij")
  hit = (dy ** 2 + dx ** 2 == distance ** 2) & (np.abs(dy) <= max_offset) & (
      np.abs(dx) <= max_offset)
  return np.stack([dy[hit], dx[hit]], axis=1)


def _draw_pairs(labels: np.ndarray, n: int, task: str, digit_classes: int,
                rng: np.random.Generator) -> np.ndarray:
  """(n, 2) row indices into `labels`; for "same" half the pairs share a number."""
  k = digit_classes
  if task == "sum_mod10":
    allowed = np.flatnonzero(labels < k)
    return allowed[rng.integers(0, len(allowed), size=(n, 2))]
  by_class = [np.flatnonzero(labels == c) for c in range(k)]
  if min(len(rows) for rows in by_class) < 2:
    raise ValueError("task 'same' needs at least two images of every digit")
  pairs = np.empty((n, 2), np.int64)
  same = rng.random(n) < 0.5
  for i in range(n):
    a = rng.integers(k)
    b = a if same[i] else (a + rng.integers(1, k)) % k
    first = rng.choice(by_class[a])
    second = rng.choice(by_class[b])
    while same[i] and second == first:  # two different images of the same number
      second = rng.choice(by_class[b])
    pairs[i] = first, second
  return pairs


def make_pair_canvases(digits: np.ndarray, digit_labels: np.ndarray, *, num_images: int,
                       canvas_size: int, distance: int, task: str,
                       seed: int | tuple[int, ...], digit_classes: int = 10) -> PairCanvases:
  """Generates `num_images` canvases from `digits` (N, s, s, 1) and their labels.

  Only the numbers 0 .. digit_classes - 1 are drawn (2 turns "same" into an XOR of two
  binary local features, learnable in a few CPU minutes).
  """
  if task not in TASKS:
    raise UserError(f"data.long_range.task={task!r}; choose from {sorted(TASKS)}")
  if not 2 <= digit_classes <= 10:
    raise UserError(f"data.long_range.digit_classes={digit_classes} must be in 2..10")
  s = digits.shape[1]
  offsets = pair_offsets(distance, canvas_size - s)
  if distance < 0 or not len(offsets):
    raise UserError(
        f"data.long_range.distance={distance} does not fit two {s} px digits on a "
        f"{canvas_size} px canvas (largest axis distance {canvas_size - s}; diagonals need "
        "an integer point on the circle)")
  rng = np.random.default_rng(seed)
  pairs = _draw_pairs(digit_labels, num_images, task, digit_classes, rng)
  chosen = offsets[rng.integers(len(offsets), size=num_images)]
  images = np.zeros((num_images, canvas_size, canvas_size, 1), np.float32)
  corners = np.empty((num_images, 2, 2), np.int64)
  for i in range(num_images):
    dy, dx = chosen[i]
    # The first digit's corner ranges so that the second (at corner + offset) fits too.
    y = rng.integers(max(0, -dy), canvas_size - s - max(0, dy) + 1)
    x = rng.integers(max(0, -dx), canvas_size - s - max(0, dx) + 1)
    corners[i] = (y, x), (y + dy, x + dx)
    for (cy, cx), row in zip(corners[i], pairs[i]):
      patch = images[i, cy:cy + s, cx:cx + s]
      np.maximum(patch, digits[row], out=patch)
  numbers = digit_labels[pairs].astype(np.int32)
  if task == "same":
    labels = (numbers[:, 0] == numbers[:, 1]).astype(np.int32)
  else:
    labels = (numbers.sum(axis=1) % 10).astype(np.int32)
  return PairCanvases(images, labels, numbers, pairs, corners + s / 2)


def long_range_dataset(data_config: ml_collections.ConfigDict) -> ArrayDataset:
  """The `data.name = "long_range"` source: train/test canvases from train/test digits."""
  cfg = data_config.long_range
  mnist = mnist_subset(num_test=data_config.num_test, split_seed=data_config.split_seed,
                       pad_to=28)
  common = dict(canvas_size=data_config.image_size, distance=cfg.distance, task=cfg.task,
                digit_classes=cfg.digit_classes)
  train = make_pair_canvases(shrink_digits(mnist.train.images, cfg.digit_size),
                             mnist.train.labels, num_images=cfg.num_train,
                             seed=(cfg.seed, 0), **common)
  test = make_pair_canvases(shrink_digits(mnist.test.images, cfg.digit_size),
                            mnist.test.labels, num_images=cfg.num_eval,
                            seed=(cfg.seed, 1), **common)
  mean = (float(train.images.mean()),)
  std = (float(train.images.std()),)
  return ArrayDataset(ArraySplit(train.images, train.labels), ArraySplit(test.images, test.labels),
                      TASKS[cfg.task], mean, std)
