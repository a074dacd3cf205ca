"""Decoding the records of the image sources, and the one count of corrupt images skipped.

A source of encoded images is a picklable sequence of records `(payload, label)`: the payload
is encoded image bytes (TFDS), a file path (ImageFolder) or a uint8 HWC array (synthetic).
`RecordLoader` decodes them in the pipeline's workers (`decode_image`), so a corrupt file costs
one record, not the run.
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


_MAX_CORRUPT_IN_A_ROW = 100


class RecordLoader:
  """Reads record `index`, decodes it; on a corrupt image, skips to the next record or fails."""

  def __init__(self, source, channels: int, on_corrupt: str):
    if on_corrupt not in ("skip", "fail"):
      raise UserError(f"data.on_corrupt={on_corrupt!r}; known: skip, fail")
    if channels not in (1, 3):
      raise UserError(f"data.channels={channels} must be 1 or 3")
    self.source = source
    self.channels = channels
    self.on_corrupt = on_corrupt

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> tuple[Image.Image, int]:
    return self.load(index)

  def load(self, index: int) -> tuple[Image.Image, int]:
    n = len(self.source)
    for _ in range(_MAX_CORRUPT_IN_A_ROW):
      payload, label = self.source[index]
      try:
        return decode_image(payload, self.channels), label
      except CorruptImage as e:
        if self.on_corrupt == "fail":
          raise UserError(f"corrupt image {e} (data.on_corrupt='fail')") from None
        CORRUPT.add(str(e), (index + 1) % n)
        index = (index + 1) % n
    raise UserError(f"{_MAX_CORRUPT_IN_A_ROW} corrupt images in a row in {self.source.name}")
