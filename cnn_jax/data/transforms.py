"""Per-image transforms on PIL images / numpy arrays, following timm's reference behaviour.

Every random choice comes from an explicit `np.random.Generator`, so an example's
augmentation is a pure function of the generator's seed (the pipeline seeds it with
(seed, global position in the stream)). What each function matches:

- `random_resized_crop`: torchvision/timm RandomResizedCrop parameters (10 tries, then the
  centre crop clamped to the ratio range), resized with PIL (or, with
  data.train_resampling = "opencv", with OpenCV: same boxes, slightly different pixels).
- `rand_augment`: timm `rand_augment_transform` ("rand-m9-mstd0.5-inc1" = 2 ops drawn with
  replacement from the 15 "increasing" ops, each applied with p=0.5, magnitude ~ N(9, 0.5)
  clipped to [0, 10], fill = the mean colour, the configured interpolation).
- `random_erasing`: timm RandomErasing(mode="pixel", max_count=1) on the normalised image.
- `resize_center_crop`: timm's eval transform (shorter side to floor(size / crop_pct),
  centre crop, torchvision rounding).
- `pad_random_crop`: the CIFAR pad-4 + random 32x32 crop; on the embedded digits (float
  arrays, `ArrayTrainTransform`) the LeNet-era random shift by up to data.max_shift px.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from cnn_jax.errors import UserError

if TYPE_CHECKING:  # Annotations only: importing the sources package loads every source.
  from cnn_jax.data.sources.arrays import ArraySplit
  from cnn_jax.data.sources.embedded import FileLayout

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def interpolation(name: str) -> Image.Resampling:
  if name not in INTERPOLATIONS:
    raise UserError(f"data.interpolation={name!r}; known: {', '.join(INTERPOLATIONS)}")
  return INTERPOLATIONS[name]


# data.train_resampling: which library resamples training images (the RandomResizedCrop
# resize and RandAugment's rotate / shear / translate). "pil" = timm's pixels; "opencv" = the
# same geometry through OpenCV's SIMD kernels, with slightly different pixels.
TRAIN_RESAMPLING = ("pil", "opencv")


@functools.cache
def _opencv():
  import cv2

  # The pipeline already runs one image per thread / process; OpenCV's own thread pool on top
  # would only oversubscribe the cores.
  cv2.setNumThreads(1)
  return cv2


def _hwc(image: np.ndarray) -> np.ndarray:
  """OpenCV and PIL hand a one-channel image back without its channel axis; the pipeline
  keeps HWC throughout."""
  return image if image.ndim == 3 else image[..., None]


def opencv_resize(image: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
  """`image` (uint8 HWC) to size x size with the interpolation's cubic / linear kernel; a side
  that shrinks by f is first blurred by a Gaussian of sigma 0.5 sqrt(f^2 - 1) px, the
  antialiasing that PIL gets from widening its kernel (nearly as close to PIL's pixels as
  INTER_AREA, at half its cost: experiments/data_formats/)."""
  cv2 = _opencv()
  h, w = image.shape[:2]
  sigma_x, sigma_y = (0.5 * math.sqrt(max((n / size) ** 2 - 1, 0.0)) for n in (w, h))
  if max(sigma_x, sigma_y) > 0.1:
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma_x, 1e-3),
                             sigmaY=max(sigma_y, 1e-3))
  flag = cv2.INTER_CUBIC if resample == Image.Resampling.BICUBIC else cv2.INTER_LINEAR
  out = cv2.resize(image, (size, size), interpolation=flag)
  return _hwc(out)


def opencv_flip(image: np.ndarray) -> np.ndarray:
  """Left-right flip of a uint8 HWC array into a new contiguous one (a cheaper copy than
  NumPy's of a negative-stride view)."""
  out = _opencv().flip(image, 1)
  return _hwc(out)


def opencv_affine(image: np.ndarray, matrix: Sequence[float], resample: Image.Resampling,
                  fill: int | Sequence[int]) -> np.ndarray:
  """PIL's `transform(size, AFFINE, matrix, resample, fillcolor)` of a uint8 HWC array.

  PIL maps output pixel centres (x + 0.5, y + 0.5) through `matrix` to input coordinates whose
  pixel centres are at +0.5; OpenCV maps integer pixel indices. Hence the shifted offsets.
  """
  cv2 = _opencv()
  a, b, c, d, e, f = matrix
  inverse = np.array([[a, b, c + 0.5 * (a + b) - 0.5], [d, e, f + 0.5 * (d + e) - 0.5]],
                     np.float64)
  flag = cv2.INTER_CUBIC if resample == Image.Resampling.BICUBIC else cv2.INTER_LINEAR
  fill = tuple(fill) if isinstance(fill, (tuple, list)) else (fill,)
  out = cv2.warpAffine(image, inverse, (image.shape[1], image.shape[0]),
                       flags=flag | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=fill)
  return _hwc(out)


def rotate_matrix(width: int, height: int, degrees: float) -> list[float]:
  """The affine matrix of PIL's `Image.rotate(degrees)` about the centre, without expand."""
  angle = -math.radians(degrees)
  cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
  cx, cy = width / 2, height / 2
  return [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]


# ------------------------------------------------------------------------- crops / resizes


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float], rng: np.random.Generator
                            ) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a crop with area fraction ~ U(scale), log aspect ~ U(log ratio)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float],
                        ratio: tuple[float, float], resample: Image.Resampling,
                        rng: np.random.Generator) -> Image.Image:
  top, left, h, w = random_resized_crop_box(img.height, img.width, scale, ratio, rng)
  return img.resize((size, size), resample, box=(left, top, left + w, top + h))


def resize_shorter(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
  """torchvision Resize(int): the shorter side becomes `size`, the longer is truncated."""
  w, h = img.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  if (new_w, new_h) == (w, h):
    return img
  return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
  w, h = img.size
  if w < size or h < size:  # torchvision pads with zeros; only for tiny images.
    canvas = Image.new(img.mode, (max(w, size), max(h, size)))
    canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
    img, (w, h) = canvas, canvas.size
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def resize_center_crop(img: Image.Image, size: int, crop_pct: float,
                       resample: Image.Resampling) -> Image.Image:
  """timm eval: resize the shorter side to floor(size / crop_pct), centre-crop size x size."""
  return center_crop(resize_shorter(img, math.floor(size / crop_pct), resample), size)


def pad_random_crop(image: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
  """Zero-pad by `pad` px on every side, then a random crop back to the original size."""
  return pad_crop_batch(image[None], pad, rng.integers(0, 2 * pad + 1, size=(1, 2)))[0]


def pad_crop_batch(images: np.ndarray, pad: int, offsets: np.ndarray) -> np.ndarray:
  """`pad_random_crop` of a NHWC batch with given (dy, dx) offsets in [0, 2 pad], one a row."""
  _, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.empty_like(images)
  for i, (dy, dx) in enumerate(offsets):
    out[i] = padded[i, dy:dy + h, dx:dx + w]
  return out


# ---------------------------------------------------------------------------- RandAugment

_LEVEL_DENOM = 10.0


def _negate(v: float, rng: np.random.Generator) -> float:
  return -v if rng.random() > 0.5 else v


def _solarize_add(img, add, thresh=128):
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _posterize(img, bits):
  """Keeps the `bits` high bits; 0 bits is black (old PIL did that; PIL >= 11 refuses 0)."""
  if bits >= 8:
    return img
  if bits <= 0:
    return img.point([0] * 256 * len(img.getbands()))
  return ImageOps.posterize(img, bits)


def _affine(img, matrix, geo):
  return img.transform(img.size, Image.Transform.AFFINE, matrix, **geo)


# name -> (function(img, magnitude, rng, geo) -> img). `geo` carries resample and fill.
_OPS = {
    "AutoContrast": lambda img, m, rng, geo: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng, geo: ImageOps.equalize(img),
    "Invert": lambda img, m, rng, geo: ImageOps.invert(img),
    "Rotate": lambda img, m, rng, geo: img.rotate(
        _negate(m / _LEVEL_DENOM * 30.0, rng), resample=geo["resample"],
        fillcolor=geo["fillcolor"]),
    "PosterizeIncreasing": lambda img, m, rng, geo: _posterize(img, 4 - int(m / _LEVEL_DENOM * 4)),
    "SolarizeIncreasing": lambda img, m, rng, geo: ImageOps.solarize(
        img, 256 - int(m / _LEVEL_DENOM * 256)),
    "SolarizeAdd": lambda img, m, rng, geo: _solarize_add(img, int(m / _LEVEL_DENOM * 110)),
    "ColorIncreasing": lambda img, m, rng, geo: ImageEnhance.Color(img).enhance(
        max(0.1, 1.0 + _negate(m / _LEVEL_DENOM * 0.9, rng))),
    "ContrastIncreasing": lambda img, m, rng, geo: ImageEnhance.Contrast(img).enhance(
        max(0.1, 1.0 + _negate(m / _LEVEL_DENOM * 0.9, rng))),
    "BrightnessIncreasing": lambda img, m, rng, geo: ImageEnhance.Brightness(img).enhance(
        max(0.1, 1.0 + _negate(m / _LEVEL_DENOM * 0.9, rng))),
    "SharpnessIncreasing": lambda img, m, rng, geo: ImageEnhance.Sharpness(img).enhance(
        max(0.1, 1.0 + _negate(m / _LEVEL_DENOM * 0.9, rng))),
    "ShearX": lambda img, m, rng, geo: _affine(
        img, (1, _negate(m / _LEVEL_DENOM * 0.3, rng), 0, 0, 1, 0), geo),
    "ShearY": lambda img, m, rng, geo: _affine(
        img, (1, 0, 0, _negate(m / _LEVEL_DENOM * 0.3, rng), 1, 0), geo),
    "TranslateXRel": lambda img, m, rng, geo: _affine(
        img, (1, 0, _negate(m / _LEVEL_DENOM * 0.45, rng) * img.size[0], 0, 1, 0), geo),
    "TranslateYRel": lambda img, m, rng, geo: _affine(
        img, (1, 0, 0, 0, 1, _negate(m / _LEVEL_DENOM * 0.45, rng) * img.size[1]), geo),
}
# The non-increasing variants of timm's _RAND_TRANSFORMS (used when inc0).
_OPS.update({
    "Posterize": lambda img, m, rng, geo: _posterize(img, int(m / _LEVEL_DENOM * 4)),
    "Solarize": lambda img, m, rng, geo: ImageOps.solarize(img, int(m / _LEVEL_DENOM * 256)),
    "Color": lambda img, m, rng, geo: ImageEnhance.Color(img).enhance(m / _LEVEL_DENOM * 1.8 + .1),
    "Contrast": lambda img, m, rng, geo: ImageEnhance.Contrast(img).enhance(
        m / _LEVEL_DENOM * 1.8 + .1),
    "Brightness": lambda img, m, rng, geo: ImageEnhance.Brightness(img).enhance(
        m / _LEVEL_DENOM * 1.8 + .1),
    "Sharpness": lambda img, m, rng, geo: ImageEnhance.Sharpness(img).enhance(
        m / _LEVEL_DENOM * 1.8 + .1),
})

# RandAugment's resampling ops as the affine matrix PIL applies (output -> input coordinates),
# for the OpenCV path: name -> function(width, height, magnitude, rng) -> matrix. Each draws
# from `rng` exactly as its PIL twin in _OPS does.
_AFFINE_OPS = {
    "Rotate": lambda w, h, m, rng: rotate_matrix(w, h, _negate(m / _LEVEL_DENOM * 30.0, rng)),
    "ShearX": lambda w, h, m, rng: (1, _negate(m / _LEVEL_DENOM * 0.3, rng), 0, 0, 1, 0),
    "ShearY": lambda w, h, m, rng: (1, 0, 0, _negate(m / _LEVEL_DENOM * 0.3, rng), 1, 0),
    "TranslateXRel": lambda w, h, m, rng: (1, 0, _negate(m / _LEVEL_DENOM * 0.45, rng) * w,
                                           0, 1, 0),
    "TranslateYRel": lambda w, h, m, rng: (1, 0, 0, 0, 1,
                                           _negate(m / _LEVEL_DENOM * 0.45, rng) * h),
}

RAND_INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")


class RandAugment:
  """timm's RandAugment from a spec like "rand-m9-mstd0.5-inc1" (keys m, n, mstd, mmax, inc)."""

  def __init__(self, spec: str, *, fill: tuple[int, ...], resample: Image.Resampling,
               resampling: str = "pil"):
    parts = spec.split("-")
    if parts[0] != "rand":
      raise UserError(f"data.randaugment={spec!r} must start with 'rand-'")
    self.magnitude, self.num_layers, self.magnitude_std, self.magnitude_max = 10.0, 2, 0.0, 10.0
    self.ops = RAND_OPS
    for part in parts[1:]:
      match = re.fullmatch(r"([a-z]+)(\d.*)", part)
      if not match or match.group(1) not in ("m", "n", "mstd", "mmax", "inc"):
        raise UserError(f"data.randaugment={spec!r}: unknown section {part!r} "
                        "(known: m, n, mstd, mmax, inc)")
      key, value = match.groups()
      try:
        if key == "m":
          self.magnitude = float(int(value))
        elif key == "n":
          self.num_layers = int(value)
        elif key == "mstd":
          self.magnitude_std = float(value)
          if self.magnitude_std > 100:
            self.magnitude_std = float("inf")
        elif key == "mmax":
          self.magnitude_max = float(int(value))
        elif key == "inc" and int(value):
          self.ops = RAND_INCREASING_OPS
      except ValueError:
        raise UserError(f"data.randaugment={spec!r}: bad value in {part!r}") from None
    self.prob = 0.5
    self.geo = {"resample": resample, "fillcolor": fill}
    self.resampling = resampling

  def __call__(self, img, rng: np.random.Generator):
    """A PIL image -> a PIL image; with resampling "opencv", a uint8 HWC array -> an array (the
    rotate / shear / translate ops run on it with OpenCV, the others through PIL)."""
    for index in rng.integers(0, len(self.ops), size=self.num_layers):  # with replacement
      if rng.random() > self.prob:
        continue
      m = self.magnitude
      if self.magnitude_std == float("inf"):
        m = rng.uniform(0, m)
      elif self.magnitude_std > 0:
        m = rng.normal(m, self.magnitude_std)
      m = max(0.0, min(m, self.magnitude_max))
      name = self.ops[index]
      if self.resampling == "pil":
        img = _OPS[name](img, m, rng, self.geo)
      elif name in _AFFINE_OPS:
        matrix = _AFFINE_OPS[name](img.shape[1], img.shape[0], m, rng)
        img = opencv_affine(img, matrix, self.geo["resample"], self.geo["fillcolor"])
      else:
        out = np.asarray(_OPS[name](Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1
                                                    else img), m, rng, self.geo))
        img = _hwc(out)
    return img


# ------------------------------------------------------------------------- random erasing


def random_erasing_box(shape: tuple[int, ...], prob: float, rng: np.random.Generator, *,
                       min_area: float = 0.02, max_area: float = 1 / 3,
                       min_aspect: float = 0.3) -> tuple[int, int, int, int] | None:
  """(top, left, h, w) of timm RandomErasing's box for an HWC image, or None (no erasing)."""
  if rng.random() > prob:
    return None
  h_img, w_img = shape[:2]
  area = h_img * w_img
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target_area = rng.uniform(min_area, max_area) * area
    aspect = math.exp(rng.uniform(*log_aspect))
    h = int(round(math.sqrt(target_area * aspect)))
    w = int(round(math.sqrt(target_area / aspect)))
    if w < w_img and h < h_img:
      top = int(rng.integers(0, h_img - h + 1))
      left = int(rng.integers(0, w_img - w + 1))
      return top, left, h, w
  return None


def random_erasing(image: np.ndarray, prob: float, rng: np.random.Generator,
                   **box_options) -> np.ndarray:
  """timm RandomErasing(mode="pixel"): one box of N(0, 1) noise on the normalised HWC image."""
  box = random_erasing_box(image.shape, prob, rng, **box_options)
  if box is None:
    return image
  top, left, h, w = box
  image = image.copy()
  image[top:top + h, left:left + w] = rng.standard_normal((h, w, image.shape[2]), np.float32)
  return image


# ------------------------------------------------------------------------------- chains


class TrainTransform:
  """Image + generator -> normalised float32 HWC array (or uint8 + erasing box), per
  `config.data`."""

  def __init__(self, data_config: ml_collections.ConfigDict):
    self.kind = data_config.augment
    if self.kind not in ("imagenet", "cifar", "none"):
      raise UserError(f"data.augment={self.kind!r}; known: imagenet, cifar, none")
    self.size = data_config.image_size
    self.scale = tuple(data_config.crop_scale)
    self.ratio = tuple(data_config.crop_ratio)
    if not (0 < self.scale[0] <= self.scale[1] <= 1) or not (0 < self.ratio[0] <= self.ratio[1]):
      raise UserError(f"data.crop_scale={self.scale} / data.crop_ratio={self.ratio} out of range")
    self.hflip = data_config.hflip_prob
    self.pad = data_config.cifar_pad
    self.erasing = data_config.random_erasing
    self.crop_pct = data_config.crop_pct
    self.resample = interpolation(data_config.interpolation)
    self.resampling = data_config.train_resampling
    if self.resampling not in TRAIN_RESAMPLING:
      raise UserError(f"data.train_resampling={self.resampling!r}; known: "
                      f"{', '.join(TRAIN_RESAMPLING)}")
    # OpenCV serves the "imagenet" chain (its crop and RandAugment); "cifar" / "none" stay PIL.
    self.opencv = self.resampling == "opencv" and self.kind == "imagenet"
    self.mean, self.std = normalisation(data_config)
    fill = tuple(min(255, round(255 * m)) for m in self.mean)
    self.randaugment = (RandAugment(data_config.randaugment, fill=fill if len(fill) > 1
                                    else fill[0], resample=self.resample,
                                    resampling="opencv" if self.opencv else "pil")
                        if data_config.randaugment else None)
    self.reduced_decode = float(data_config.reduced_decode)
    if self.reduced_decode and self.reduced_decode < 1:
      raise UserError(f"data.reduced_decode={self.reduced_decode} must be 0 (off) or >= 1")
    self.normalise_on_device = bool(data_config.normalise_on_device)

  def _crop(self, img, rng: np.random.Generator):
    """RandomResizedCrop; an undecoded image (EncodedImage) is decoded only now, reduced by a
    JPEG DCT scale when the crop's shorter side is at least `reduced_decode` x the output.
    A PIL image, or with OpenCV resampling a uint8 HWC array."""
    width, height = img.size
    top, left, h, w = random_resized_crop_box(height, width, self.scale, self.ratio, rng)
    min_size = None
    if self.reduced_decode and min(h, w) >= self.reduced_decode * self.size:
      # The decoded crop keeps at least `size` px on its shorter side.
      factor = min(h, w) / self.size
      min_size = (math.ceil(width / factor), math.ceil(height / factor))
    if self.opencv:
      if isinstance(img, Image.Image):
        image = to_array(img)
      else:
        image = img.decode_array(min_size)
      fx, fy = image.shape[1] / width, image.shape[0] / height
      # The box in whole pixels of the (possibly reduced) decode: off by < 1/2 of its pixel.
      x0, y0 = round(left * fx), round(top * fy)
      x1, y1 = max(x0 + 1, round((left + w) * fx)), max(y0 + 1, round((top + h) * fy))
      return opencv_resize(image[y0:y1, x0:x1], self.size, self.resample)
    if not isinstance(img, Image.Image):
      img = img.decode(min_size)
    fx, fy = img.width / width, img.height / height
    return img.resize((self.size, self.size), self.resample,
                      box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy))

  def __call__(self, img, rng: np.random.Generator):
    """`img`: a PIL image or an `sources.images.EncodedImage`. Returns the normalised float32
    HWC array, or with `normalise_on_device` (uint8 HWC array, erasing box (top, left, h, w),
    all 0 for none): `mixing.normalise_on_device` finishes the job on the accelerator."""
    if self.kind == "imagenet":
      img = self._crop(img, rng)
    else:
      if not isinstance(img, Image.Image):
        img = img.decode()
      if self.kind == "cifar":
        if img.size != (self.size, self.size):
          img = resize_center_crop(img, self.size, 1.0, self.resample)
      else:
        img = resize_center_crop(img, self.size, self.crop_pct, self.resample)
    if self.kind != "none" and rng.random() < self.hflip:
      img = opencv_flip(img) if self.opencv else img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if self.randaugment is not None:
      img = self.randaugment(img, rng)
    image = img if self.opencv else to_array(img)
    if self.kind == "cifar" and self.pad:
      image = pad_random_crop(image, self.pad, rng)
    if self.normalise_on_device:
      box = random_erasing_box(image.shape, self.erasing, rng) if self.erasing else None
      return image, np.asarray(box or (0, 0, 0, 0), np.int32)
    image = (image.astype(np.float32) / 255.0 - self.mean) / self.std
    if self.erasing:
      image = random_erasing(image, self.erasing, rng)
    return image


class EvalTransform:
  def __init__(self, data_config: ml_collections.ConfigDict):
    self.size = data_config.image_size
    self.crop_pct = data_config.crop_pct
    if not 0 < self.crop_pct <= 1:
      raise UserError(f"data.crop_pct={self.crop_pct} must be in (0, 1]")
    self.resample = interpolation(data_config.interpolation)
    self.mean, self.std = normalisation(data_config)

  def __call__(self, img: Image.Image) -> np.ndarray:
    img = resize_center_crop(img, self.size, self.crop_pct, self.resample)
    return (to_array(img).astype(np.float32) / 255.0 - self.mean) / self.std

  def input_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in an image of `size` (width, height) of the centre crop the
    model sees (`resize_center_crop`'s geometry)."""
    w, h = size
    shorter = math.floor(self.size / self.crop_pct)
    new_w, new_h = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    sx, sy = new_w / w, new_h / h
    left = round((new_w - self.size) / 2.0)
    top = round((new_h - self.size) / 2.0)
    return (left / sx, top / sy, (left + self.size) / sx, (top + self.size) / sy)


class ArrayTrainTransform:
  """Embedded sets (float32 HWC arrays in [0, 1], in memory): a random shift by up to
  `max_shift` px with zero fill (pad + random crop, the LeNet-era augmentation), then
  normalisation with the set's own statistics; a whole batch at once.

  The offsets are drawn for the global batch at `step` from (seed, step), and each process
  keeps its rows: the global batch does not depend on how many processes share it.

  At the first batch the set is normalised and zero-padded once (the fill normalised as the
  pixels are), and each batch is then one gather of whole rows, in NHWC order, from that copy's
  sliding windows (a view): a per-row pad and crop, and a per-batch normalisation, cost a small
  model's step several per cent of its time on a 2-core machine (experiments/cpu_speed/).
  With `data.crop_on_device` the padded copy stays on the devices instead (`resident`), and a
  batch is only the rows' indices and offsets (`train_crops`), cut there by
  `mixing.cut_crops`: the same images, without the host's gather between steps.
  """

  def __init__(self, max_shift: int, mean: tuple[float, ...], std: tuple[float, ...]):
    if max_shift < 0:
      raise UserError(f"data.max_shift={max_shift} must be >= 0")
    self.max_shift = max_shift
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    # (the set, its normalised padded copy, that copy's windows)
    self._padded: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

  def __getstate__(self) -> dict:
    # A worker process makes its own copy: pickled, the windows view would be copied whole,
    # (2 max_shift + 1)^2 times the set.
    state = dict(self.__dict__)
    state["_padded"] = None
    return state

  def _normalised(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normalised, padded set (N, H + 2 pad, W + 2 pad, C) and its windows
    (N, 2 pad + 1, 2 pad + 1, H, W, C): every shifted crop, as a view."""
    if self._padded is None or self._padded[0] is not images:
      pad = self.max_shift
      # The pixels and the zero fill normalised with the same float32 operations as a batch
      # normalised after its crop: the same values.
      padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      padded = padded.astype(np.float32, copy=False)
      padded -= self.mean
      padded /= self.std
      n, _, _, c = images.shape
      s_n, s_h, s_w, s_c = padded.strides
      self._padded = (images, padded, np.lib.stride_tricks.as_strided(
          padded, (n, 2 * pad + 1, 2 * pad + 1, *images.shape[1:3], c),
          (s_n, s_h, s_w, s_h, s_w, s_c), writeable=False))
    return self._padded[1], self._padded[2]

  def _offsets(self, rows: int, *, seed: int, step: int, first_row: int,
               global_batch_size: int) -> np.ndarray:
    """(rows, 2) shifts (top, left) into the padded images of this process's rows."""
    if not self.max_shift:
      return np.zeros((rows, 2), np.int64)
    rng = np.random.default_rng([seed, step, 1])
    return rng.integers(0, 2 * self.max_shift + 1,
                        size=(global_batch_size, 2))[first_row:first_row + rows]

  def train_batch(self, records: ArraySplit, indices: np.ndarray, *, seed: int, step: int,
                  first_row: int, global_batch_size: int) -> dict[str, np.ndarray]:
    _, windows = self._normalised(records.images)
    offsets = self._offsets(len(indices), seed=seed, step=step, first_row=first_row,
                            global_batch_size=global_batch_size)
    return {"image": windows[indices, offsets[:, 0], offsets[:, 1]],
            "label": records.labels[indices].astype(np.int32, copy=False)}

  def train_crops(self, records: ArraySplit, indices: np.ndarray, *, seed: int, step: int,
                  first_row: int, global_batch_size: int) -> dict[str, np.ndarray]:
    """`train_batch`'s rows as the indices of their images in `resident`'s set and their
    shifts, for `mixing.cut_crops` inside the step."""
    offsets = self._offsets(len(indices), seed=seed, step=step, first_row=first_row,
                            global_batch_size=global_batch_size)
    return {"crop_index": indices.astype(np.int32), "crop_offset": offsets.astype(np.int32),
            "label": records.labels[indices].astype(np.int32, copy=False)}

  def resident(self, records: ArraySplit) -> dict[str, np.ndarray]:
    """What `train_crops`' batches are cut from, to be placed on every device once."""
    padded, _ = self._normalised(records.images)
    return {"crop_source": padded}


class ArrayEvalTransform:
  """Embedded sets: normalisation only."""

  def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    return (image - self.mean) / self.std


class ArrayFileTransform:
  """An image file as an embedded set's eval image (`predict` on a run trained on the set):
  resized whole to the set's side (`layout`: a `sources.embedded.FileLayout`), in [0, 1],
  its pixels repeated and padded into the set's frame as the set placed its own, normalised
  with the set's statistics. An image of the set's side, as the set's own, is not resampled."""

  def __init__(self, layout: FileLayout, resample: Image.Resampling, mean: tuple[float, ...],
               std: tuple[float, ...]):
    self.layout = layout
    self.resample = resample
    self.normalise = ArrayEvalTransform(mean, std)

  def __call__(self, img: Image.Image) -> np.ndarray:
    side, repeat, padding = self.layout.side, self.layout.repeat, self.layout.padding
    if img.size != (side, side):
      img = img.resize((side, side), self.resample)
    image = to_array(img).astype(np.float32) / 255.0
    if repeat > 1:
      image = image.repeat(repeat, axis=0).repeat(repeat, axis=1)
    return self.normalise(np.pad(image, (padding, padding, (0, 0))))

  def input_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in an image of `size` (width, height) of the frame the model
    sees: the whole image, and the padding around it."""
    w, h = size
    placed = self.layout.side * self.layout.repeat
    sx, sy = w / placed, h / placed
    before, frame = self.layout.padding[0], self.layout.size
    return (-before * sx, -before * sy, (frame - before) * sx, (frame - before) * sy)


def to_array(img: Image.Image) -> np.ndarray:
  image = np.asarray(img)
  return image[..., None] if image.ndim == 2 else image


def normalisation(data_config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  mean = np.asarray(data_config.mean, np.float32)
  std = np.asarray(data_config.std, np.float32)
  if mean.shape != (data_config.channels,) or std.shape != (data_config.channels,):
    raise UserError(f"data.mean/data.std need {data_config.channels} values (data.channels), "
                    f"got {tuple(mean)} / {tuple(std)}")
  if (std <= 0).any():
    raise UserError(f"data.std={tuple(std)} must be positive")
  return mean, std
