"""Random-access image sources: TFDS (array_record), ImageFolder, synthetic.

Each source is a picklable sequence of records `(payload, label)`: the payload is encoded
image bytes (TFDS), a file path (ImageFolder) or a uint8 HWC array (synthetic). Decoding
happens in the pipeline's workers (`decode_image`), so a corrupt file costs one record, not
the run.
"""

from __future__ import annotations

import io
import logging
import os
import threading

import numpy as np
from PIL import Image

from cnn_jax.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


class CorruptImage(Exception):
  """An image payload that PIL cannot decode (corrupt or truncated)."""


def decode_image(payload, channels: int) -> Image.Image:
  """Decodes bytes / a path / an array into a loaded PIL image in RGB (3) or L (1) mode.

  Grayscale, palette, CMYK, RGBA, 16-bit images are converted (alpha dropped, as timm's
  ImageFolder loader does). Raises CorruptImage on anything PIL cannot read in full.
  """
  if isinstance(payload, np.ndarray):
    img = Image.fromarray(payload.squeeze(-1) if payload.shape[-1] == 1 else payload)
  else:
    try:
      img = Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload)
      img.load()  # Truncated files fail here, not later.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      raise CorruptImage(f"{_describe(payload)}: {e}") from None
  mode = "RGB" if channels == 3 else "L"
  if img.mode == "I;16" or img.mode == "I":
    img = Image.fromarray((np.asarray(img, np.float64) / 257.0).clip(0, 255).astype(np.uint8))
  if img.mode != mode:
    img = img.convert(mode)
  return img


def _describe(payload) -> str:
  if isinstance(payload, (str, os.PathLike)):
    return str(payload)
  return f"{len(payload)}-byte encoded image" if isinstance(payload, bytes) else "image"


class CorruptCounter:
  """Counts images skipped as corrupt in this process (each worker process has its own)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0

  def add(self, what: str, replacement: int) -> None:
    with self._lock:
      self.count += 1
      n = self.count
    log.warning("skipped corrupt image %s (using record %d instead); %d skipped so far "
                "in this process", what, replacement, n)


CORRUPT = CorruptCounter()


# --------------------------------------------------------------------------------- TFDS


class TfdsSource:
  """One split of a prepared TFDS data set, read at random with `tfds.data_source`.

  Needs the array_record file format (`tfds build NAME --file_format=array_record`), which
  gives random access and works without TensorFlow installed.
  """

  def __init__(self, name: str, data_dir: str, split: str):
    import tensorflow_datasets as tfds

    if not data_dir:
      raise UserError("data.data_dir is empty; set it to the TFDS data_dir that holds "
                      f"{name!r}")
    if not os.path.isdir(data_dir):
      raise UserError(f"data.data_dir={data_dir!r} does not exist")
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise UserError(f"TFDS has no data set {name!r} (and {data_dir!r} holds none by that "
                      "name)") from None
    except (ValueError, KeyError) as e:
      raise UserError(f"bad TFDS name {name!r}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
      raise UserError(
          f"TFDS data set {name!r} is not prepared in {data_dir!r}; run: tfds build {name} "
          f"--data_dir={data_dir} --file_format=array_record")
    info = builder.info
    keys = info.supervised_keys
    if not keys or len(keys) != 2:
      raise UserError(f"TFDS data set {name!r} has no (image, label) supervised keys")
    self.image_key, self.label_key = keys
    label_feature = info.features[self.label_key]
    self.num_classes = int(getattr(label_feature, "num_classes", 0) or 0)
    if not self.num_classes:
      raise UserError(f"TFDS data set {name!r}: {self.label_key!r} is not a class label")
    try:
      num_examples = info.splits[split].num_examples
    except (ValueError, KeyError, AssertionError) as e:
      raise UserError(f"TFDS {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    if num_examples == 0:
      raise UserError(f"TFDS {name!r} split {split!r} is empty")
    if info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise UserError(
          f"TFDS {name!r} in {data_dir!r} is stored as {info.file_format.value}; random access "
          f"needs array_record: tfds convert_format --root_data_dir={data_dir} "
          "--out_file_format=array_record (or rebuild with --file_format=array_record)")
    try:
      self._source = builder.as_data_source(
          split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})
    except (ValueError, KeyError, AssertionError) as e:
      raise UserError(f"TFDS {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    except NotImplementedError as e:
      raise UserError(f"TFDS {name!r} in {data_dir!r} is not in array_record format (needed "
                      f"for random access): {str(e).splitlines()[0]}") from None
    if len(self._source) == 0:
      raise UserError(f"TFDS {name!r} split {split!r} is empty")
    self.name = name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    example = self._source[int(index)]
    return example[self.image_key], int(example[self.label_key])

  def describe(self, index: int) -> str:
    return f"{self.name} record {index}"


# -------------------------------------------------------------------------- ImageFolder


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


# ---------------------------------------------------------------------------- synthetic


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
