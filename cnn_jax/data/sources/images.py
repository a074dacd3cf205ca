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
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from cnn_jax.data.sources.base import Records
from cnn_jax.errors import UserError

log = logging.getLogger(__name__)


class CorruptImage(Exception):
  """An image payload that PIL cannot decode (corrupt or truncated)."""


DECODERS = ("simplejpeg", "pil")


def decode_image(payload: bytes | str | np.ndarray, channels: int) -> Image.Image:
  """Decodes bytes / a path / an array into a loaded PIL image in RGB (3) or L (1) mode.

  Grayscale, palette, CMYK, RGBA, 16-bit images are converted (alpha dropped, as timm's
  ImageFolder loader does). Raises CorruptImage on anything PIL cannot read in full.
  """
  return EncodedImage(payload, channels, "pil").decode()


class EncodedImage:
  """An image payload opened for decoding: its size comes from the header, before any pixel is
  decoded, so a training crop can ask for a reduced-size decode (JPEG DCT scaling).

  decoder "simplejpeg" decodes JPEGs with libjpeg-turbo through simplejpeg (other formats and
  CMYK JPEGs through PIL); "pil" uses PIL alone (with `Image.draft` for the reduced size).
  """

  def __init__(self, payload: bytes | str | np.ndarray, channels: int,
               decoder: str = "simplejpeg"):
    self.channels = channels
    self.mode = "RGB" if channels == 3 else "L"
    self._array = self._pil = self._jpeg = None
    if isinstance(payload, np.ndarray):
      self._array = payload
      self.size = (payload.shape[1], payload.shape[0])
      return
    self._what = _describe(payload)
    if decoder == "simplejpeg":
      data = payload
      if not isinstance(payload, bytes):
        with open(payload, "rb") as f:
          data = f.read()
      if data[:2] == b"\xff\xd8":
        import simplejpeg
        try:
          height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as e:
          raise CorruptImage(f"{self._what}: {e}") from None
        if colorspace in ("Gray", "YCbCr", "RGB"):  # CMYK / YCCK: PIL's conversion, below.
          self._jpeg, self.size = data, (width, height)
          return
      payload = data
    try:
      self._pil = Image.open(io.BytesIO(payload) if isinstance(payload, bytes) else payload)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      raise CorruptImage(f"{self._what}: {e}") from None
    self.size = self._pil.size

  def decode(self, min_size: tuple[int, int] | None = None) -> Image.Image:
    """The loaded image in RGB or L; with `min_size` (w, h), JPEGs may be decoded reduced by
    a DCT scaling factor, never below `min_size`."""
    if self._array is not None:
      a = self._array
      return Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).convert(self.mode)
    if self._jpeg is not None:
      pixels = self._decode_jpeg(min_size)
      return Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
    return self._decode_pil(min_size)

  def decode_array(self, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """`decode` as a uint8 HWC array; simplejpeg's output is used as is (no PIL copy)."""
    if self._jpeg is not None:
      return self._decode_jpeg(min_size)
    if self._array is not None and self._array.dtype == np.uint8 and self._array.ndim == 3 \
        and self._array.shape[-1] == self.channels:
      return self._array
    image = np.asarray(self.decode(min_size))
    return image[..., None] if image.ndim == 2 else image

  def _decode_jpeg(self, min_size) -> np.ndarray:
    import simplejpeg
    min_w, min_h = min_size or (0, 0)
    try:
      pixels = simplejpeg.decode_jpeg(self._jpeg, "RGB" if self.channels == 3 else "GRAY",
                                      min_width=min_w, min_height=min_h)
    except ValueError as e:
      raise CorruptImage(f"{self._what}: {e}") from None
    return pixels if pixels.ndim == 3 else pixels[..., None]

  def _decode_pil(self, min_size) -> Image.Image:
    img = self._pil
    try:
      if min_size is not None and img.format == "JPEG":
        img.draft(img.mode, min_size)
      img.load()  # Truncated files fail here, not later.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      raise CorruptImage(f"{self._what}: {e}") from None
    if img.mode == "I;16" or img.mode == "I":
      img = Image.fromarray((np.asarray(img, np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    if img.mode != self.mode:
      img = img.convert(self.mode)
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

  def __init__(self, source: Records, channels: int, on_corrupt: str, decoder: str = "pil"):
    if on_corrupt not in ("skip", "fail"):
      raise UserError(f"data.on_corrupt={on_corrupt!r}; known: skip, fail")
    if channels not in (1, 3):
      raise UserError(f"data.channels={channels} must be 1 or 3")
    if decoder not in DECODERS:
      raise UserError(f"data.decoder={decoder!r}; known: {', '.join(DECODERS)}")
    self.source = source
    self.channels = channels
    self.on_corrupt = on_corrupt
    self.decoder = decoder

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> tuple[Image.Image, int]:
    return self.load(index)

  def load(self, index: int, use: Callable[[EncodedImage], Any] | None = None
           ) -> tuple[Any, int]:
    """(decoded image, label), or (use(EncodedImage), label) when `use` decodes the image
    itself (a training transform choosing a reduced-size decode): a corrupt image found then
    is skipped the same way."""
    n = len(self.source)
    for _ in range(_MAX_CORRUPT_IN_A_ROW):
      payload, label = self.source[index]
      try:
        img = EncodedImage(payload, self.channels, self.decoder)
        return (img.decode() if use is None else use(img)), label
      except CorruptImage as e:
        if self.on_corrupt == "fail":
          raise UserError(f"corrupt image {e} (data.on_corrupt='fail')") from None
        CORRUPT.add(str(e), (index + 1) % n)
        index = (index + 1) % n
    raise UserError(f"{_MAX_CORRUPT_IN_A_ROW} corrupt images in a row in {self.source.name}")
