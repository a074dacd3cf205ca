"""What the train step does to a batch on the device: uint8 images normalised (and erased),
the in-memory sets' crops cut from their resident copy (`cut_crops`), and batch-level mixup /
cutmix, as timm's `Mixup(mode="batch")` (the ConvNeXt recipe).

Pure jax functions, called inside the jitted train step on the global batch:
`mix(images, labels_onehot, rng, config) -> (images, soft_labels)`.

Per batch, as timm: with probability `prob` the batch is mixed, else left as is; when both
alphas are > 0, cutmix is chosen with probability `switch_prob`; lam ~ Beta(alpha, alpha).
Every image is paired with the batch flipped (row i with row N-1-i). Cutmix pastes a box of
side sqrt(1 - lam) * (H, W) centred uniformly, clipped at the border, and corrects lam to the
pasted area. Labels mix with the same lam; pass already-smoothed one-hot labels to get
timm's `mixup_target(..., smoothing)` exactly (smoothing is affine, so the order commutes).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections


def is_active(mixup_config: ml_collections.ConfigDict) -> bool:
  return mixup_config.mixup_alpha > 0 or mixup_config.cutmix_alpha > 0


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(top, bottom, left, right) of timm's rand_bbox: side sqrt(1 - lam), clipped centre box."""
  cut_rat = jnp.sqrt(1.0 - lam)
  cut_h = (height * cut_rat).astype(jnp.int32)
  cut_w = (width * cut_rat).astype(jnp.int32)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  top = jnp.clip(cy - cut_h // 2, 0, height)
  bottom = jnp.clip(cy + cut_h // 2, 0, height)
  left = jnp.clip(cx - cut_w // 2, 0, width)
  right = jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def mix(images: jax.Array, labels_onehot: jax.Array, rng: jax.Array,
        config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Mixup or cutmix of an NHWC batch with its flip; returns (images, soft labels).

  `config` is `config.data.mixup`: mixup_alpha, cutmix_alpha, prob, switch_prob.
  """
  mixup_alpha, cutmix_alpha = float(config.mixup_alpha), float(config.cutmix_alpha)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, labels_onehot
  k_apply, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(rng, 5)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < config.switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mixup = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
  lam_cutmix = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
  lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup).astype(jnp.float32)
  apply = jax.random.uniform(k_apply) < config.prob
  lam = jnp.where(apply, lam, 1.0)

  flipped = jnp.flip(images, axis=0)
  _, height, width, _ = images.shape
  top, bottom, left, right = cutmix_box(k_box, lam, height, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  lam_box = 1.0 - (bottom - top) * (right - left) / (height * width)  # timm's correct_lam
  cut = jnp.where(box[None, :, :, None], flipped, images)
  blend = images * lam.astype(images.dtype) + flipped * (1.0 - lam).astype(images.dtype)
  cutmix_on = use_cutmix & apply
  images = jnp.where(cutmix_on, cut, blend)
  lam = jnp.where(cutmix_on, lam_box, lam).astype(labels_onehot.dtype)
  soft = labels_onehot * lam + jnp.flip(labels_onehot, axis=0) * (1.0 - lam)
  return images, soft


def normalise_on_device(images: jax.Array, erase_box: jax.Array | None, rng: jax.Array,
                        mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 NHWC training images -> (x / 255 - mean) / std in float32, then timm's pixel-mode
  random erasing inside each image's `erase_box` (top, left, h, w; h = 0: none) with N(0, 1)
  noise: what `transforms.TrainTransform` does on the host, done where the batch lands."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  out = (images.astype(jnp.float32) / 255.0 - mean) / std
  if erase_box is None:
    return out
  _, height, width, _ = images.shape
  top, left, h, w = (erase_box[:, i, None, None, None] for i in range(4))
  rows = jnp.arange(height)[None, :, None, None]
  cols = jnp.arange(width)[None, None, :, None]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  noise = jax.random.normal(rng, out.shape, jnp.float32)
  return jnp.where(inside, noise, out)


def cut_crops(batch: dict[str, jax.Array], source: jax.Array, image_shape: Sequence[int]
              ) -> dict[str, jax.Array]:
  """A `data.crop_on_device` batch (`crop_index`, `crop_offset`: rows of `source`, the shift
  of each crop's top left corner) -> the batch with its `image`s, `image_shape` (H, W, C) crops
  of `source` (the normalised padded set, `transforms.ArrayTrainTransform.resident`): the
  host's `train_batch` images, cut on the device."""
  height, width, channels = image_shape
  batch = dict(batch)
  index, offset = batch.pop("crop_index"), batch.pop("crop_offset")

  def crop(row: jax.Array, top: jax.Array, left: jax.Array) -> jax.Array:
    return jax.lax.dynamic_slice(source, (row, top, left, 0), (1, height, width, channels))[0]

  batch["image"] = jax.vmap(crop)(index, offset[:, 0], offset[:, 1])
  return batch
