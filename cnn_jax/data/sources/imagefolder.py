"""`root/<split>/<class>/<image>` folders of image files, as torchvision's ImageFolder.

`data.source = "imagefolder"`: `data.data_dir` holds `data.train_split`/ and
`data.eval_split`/, each with one subdirectory per class (sorted names = class ids).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from cnn_jax.data.sources.arrays import subset_indices
from cnn_jax.data.sources.base import Splits
from cnn_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


def create(config: ml_collections.ConfigDict) -> Splits:
  data_config = config.data
  if not data_config.data_dir or not os.path.isdir(data_config.data_dir):
    raise UserError(f"data.data_dir={data_config.data_dir!r} is not a directory; it should "
                    f"hold {data_config.train_split}/ and {data_config.eval_split}/ class folders")
  train = ImageFolderSource(os.path.join(data_config.data_dir, data_config.train_split))
  if data_config.train_fraction != 1.0:
    rows = subset_indices(train.labels, data_config.train_fraction, data_config.split_seed)
    train.paths = [train.paths[i] for i in rows]
    train.labels = train.labels[rows]
  evaluation = ImageFolderSource(os.path.join(data_config.data_dir, data_config.eval_split),
                                 classes=train.classes)
  return Splits(train, evaluation, train.num_classes)



class ImageFolderSource:
  """`root/<class>/<image>` files; classes are the sorted subdirectory names."""

  def __init__(self, root: str, classes: list[str] | None = None):
    if not os.path.isdir(root):
      raise UserError(f"image folder {root!r} does not exist")
    found = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if not found:
      raise UserError(f"image folder {root!r} has no class subdirectories")
    if classes is not None and found != classes:
      missing = sorted(set(classes) - set(found))
      extra = sorted(set(found) - set(classes))
      raise UserError(f"image folder {root!r} has different classes from the train split "
                      f"(missing: {missing[:5]}, extra: {extra[:5]})")
    self.classes = found
    self.num_classes = len(found)
    paths, labels = [], []
    for label, name in enumerate(found):
      files = sorted(
          entry.path for entry in os.scandir(os.path.join(root, name))
          if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS))
      if not files:
        raise UserError(f"class directory {os.path.join(root, name)!r} holds no images "
                        f"({', '.join(IMAGE_EXTENSIONS[:3])}, ...)")
      paths += files
      labels += [label] * len(files)
    self.paths = paths
    self.labels = np.asarray(labels, np.int32)
    self.name = root

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int):
    return self.paths[index], int(self.labels[index])

  def describe(self, index: int) -> str:
    return self.paths[index]


