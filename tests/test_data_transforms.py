"""Augmentation statistics and reference behaviour: crop scale/ratio, flip rate, RandAugment
levels, random erasing, eval resize + centre crop, CIFAR crops, mixup / cutmix on device."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image, ImageOps

from cnn_jax import config as base
from cnn_jax.data import mixing, transforms
from cnn_jax.errors import UserError


def data_config(**fields) -> ml_collections.ConfigDict:
  config = base.get_config().data
  config.mean, config.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
  for key, value in fields.items():
    config[key] = value
  return config


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
def test_random_resized_crop_scale_and_ratio_ranges(scale):
  rng = np.random.default_rng(0)
  height, width = 400, 400  # Square: crops of ratio r and 1/r fit equally often.
  areas, ratios = [], []
  for _ in range(3000):
    top, left, h, w = transforms.random_resized_crop_box(height, width, scale, (3 / 4, 4 / 3),
                                                         rng)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    areas.append(h * w / (height * width))
    ratios.append(w / h)
  areas, ratios = np.asarray(areas), np.asarray(ratios)
  tol = 0.01  # Rounding of h and w to whole pixels.
  assert areas.min() >= scale[0] - tol and areas.max() <= scale[1] + tol
  assert ratios.min() >= 3 / 4 - tol and ratios.max() <= 4 / 3 + tol
  # Accepted draws: area ~ U(scale) truncated where the box does not fit (large areas with
  # extreme ratios), so the lower part of the range is uniform.
  lo, hi = scale[0], scale[0] + 0.3
  in_band = areas[(areas >= lo) & (areas < hi)]
  assert abs(in_band.mean() - (lo + hi) / 2) < 0.01
  assert areas.min() < scale[0] + 0.01  # The range's bottom is reached.
  # log(ratio) ~ U(log 3/4, log 4/3): mean about 0.
  assert abs(np.log(ratios).mean()) < 0.02


def test_random_resized_crop_falls_back_to_a_centre_crop_of_extreme_images():
  rng = np.random.default_rng(0)
  # 1000x10: no box of ratio within [3/4, 4/3] and area >= 8% fits; centre crop at ratio 4/3.
  top, left, h, w = transforms.random_resized_crop_box(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3),
                                                       rng)
  assert (h, w) == (10, 13) and top == 0 and left == (1000 - 13) // 2


def test_flip_rate_is_one_half():
  cfg = data_config(augment="cifar", cifar_pad=0, image_size=8)
  train = transforms.TrainTransform(cfg)
  half = np.zeros((8, 8, 3), np.uint8)
  half[:, 4:] = 255
  img = Image.fromarray(half)
  flips = [train(img, np.random.default_rng([1, i]))[:, 0].mean() > 0.5 for i in range(4000)]
  assert abs(np.mean(flips) - 0.5) < 0.03  # 4 sigma.


def test_cifar_pad_crop_is_a_shift_of_at_most_4():
  rng = np.random.default_rng(0)
  image = np.zeros((32, 32, 3), np.uint8)
  image[10:20, 12:22] = 200
  shifts = set()
  for _ in range(1500):
    out = transforms.pad_random_crop(image, 4, rng)
    match = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
             if np.array_equal(np.roll(image, (dy, dx), axis=(0, 1)), out)]
    assert len(match) == 1
    shifts.add(match[0])
  assert len(shifts) == 81  # Every offset in [-4, 4]^2 occurs.


def test_eval_resize_and_centre_crop_match_timm():
  # timm eval, 224 px, crop_pct 0.875: shorter side to floor(224 / 0.875) = 256 (the longer
  # to int(256 * 500 / 375) = 341), then a centre crop at round((341 - 224) / 2) = 58.
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
  for name, resample in (("bicubic", Image.Resampling.BICUBIC),
                         ("bilinear", Image.Resampling.BILINEAR)):
    out = transforms.EvalTransform(data_config(image_size=224, crop_pct=0.875,
                                               interpolation=name))(img)
    want = np.asarray(img.resize((341, 256), resample).crop((58, 16, 58 + 224, 16 + 224)))
    np.testing.assert_allclose(out, want / 255.0, atol=1e-6)
  # ConvNeXt at 224 uses crop_pct 0.875; ViT-style 0.9: floor(224 / 0.9) = 248.
  assert transforms.resize_shorter(img, math.floor(224 / 0.9), resample).size == (330, 248)


def test_rand_augment_spec_and_levels_follow_timm():
  ra = transforms.RandAugment("rand-m9-mstd0.5-inc1", fill=(124, 116, 104),
                              resample=Image.Resampling.BICUBIC)
  assert (ra.magnitude, ra.magnitude_std, ra.num_layers, ra.prob) == (9, 0.5, 2, 0.5)
  assert ra.ops == transforms.RAND_INCREASING_OPS and len(ra.ops) == 15
  for bad in ("augmix-m9", "rand-q9", "rand-mfoo"):
    with pytest.raises(UserError):
      transforms.RandAugment(bad, fill=(0, 0, 0), resample=Image.Resampling.BICUBIC)
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
  ops, geo = transforms._OPS, ra.geo

  def same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b))

  # Magnitude 9 in timm's level functions: posterize keeps 4 - int(3.6) = 1 bit, solarize
  # above 256 - int(230.4) = 26, solarize-add adds int(99) = 99 below 128, rotate +-27 deg,
  # shear +-0.27, translate +-0.405 of the size, enhance factor 1 +- 0.81.
  assert same(ops["PosterizeIncreasing"](img, 9.0, rng, geo), ImageOps.posterize(img, 1))
  assert same(ops["SolarizeIncreasing"](img, 9.0, rng, geo), ImageOps.solarize(img, 26))
  lut = [min(255, i + 99) if i < 128 else i for i in range(256)] * 3
  assert same(ops["SolarizeAdd"](img, 9.0, rng, geo), img.point(lut))
  rotated = ops["Rotate"](img, 9.0, rng, geo)
  assert any(same(rotated, img.rotate(a, resample=Image.Resampling.BICUBIC,
                                      fillcolor=(124, 116, 104))) for a in (27.0, -27.0))
  moved = ops["TranslateXRel"](img, 9.0, rng, geo)
  assert any(same(moved, img.transform(img.size, Image.Transform.AFFINE,
                                       (1, 0, s * 0.405 * 40, 0, 1, 0), **geo))
             for s in (1, -1))
  # Magnitude ~ N(9, 0.5) clipped to [0, 10]; each of the 2 layers fires with p = 0.5, so a
  # quarter of images pass unchanged (plus rare no-op draws).
  unchanged = np.mean([same(ra(img, np.random.default_rng([2, i])), img) for i in range(800)])
  assert 0.2 < unchanged < 0.33


def test_random_erasing_rate_area_and_aspect():
  rng = np.random.default_rng(0)
  image = np.zeros((64, 48, 3), np.float32)
  erased, areas, aspects = 0, [], []
  for _ in range(4000):
    out = transforms.random_erasing(image, 0.25, rng)
    changed = np.any(out != 0, axis=-1)
    if changed.any():
      erased += 1
      rows, cols = np.nonzero(changed)
      h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
      areas.append(h * w / (64 * 48))
      aspects.append(h / w)
  assert abs(erased / 4000 - 0.25) < 0.03
  assert min(areas) >= 0.02 - 0.005 and max(areas) <= 1 / 3 + 0.02
  assert min(aspects) >= 0.3 - 0.05 and max(aspects) <= 1 / 0.3 + 0.5


def test_imagenet_train_transform_output():
  cfg = data_config(image_size=32, augment="imagenet", randaugment="rand-m9-mstd0.5-inc1",
                    random_erasing=0.25, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  train = transforms.TrainTransform(cfg)
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
  a = train(img, np.random.default_rng(3))
  assert a.shape == (32, 32, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, train(img, np.random.default_rng(3)))  # Pure in the rng.
  with pytest.raises(UserError, match="crop_scale"):
    transforms.TrainTransform(data_config(crop_scale=(0.5, 0.2)))
  with pytest.raises(UserError, match="interpolation"):
    transforms.TrainTransform(data_config(interpolation="nearest-ish"))


# ----------------------------------------------------------------------------- mixing


def _mixup_config(**fields):
  return ml_collections.ConfigDict({"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0,
                                    "switch_prob": 0.5, **fields})


def _batch(n=16, size=8, classes=10):
  images = jnp.arange(n, dtype=jnp.float32)[:, None, None, None] * jnp.ones((n, size, size, 3))
  labels = jnp.arange(n) % classes
  return images, optax.smooth_labels(jax.nn.one_hot(labels, classes), 0.1)


def test_mixup_cutmix_soft_labels_sum_to_one_and_match_the_pixels():
  images, onehot = _batch()
  mix = jax.jit(lambda rng: mixing.mix(images, onehot, rng, _mixup_config()))
  lams, cut_lams = [], []
  for i in range(200):
    out, soft = mix(jax.random.key(i))
    np.testing.assert_allclose(soft.sum(-1), 1.0, atol=1e-5)
    assert float(soft.min()) >= 0.1 / 10 - 1e-6  # Label smoothing's floor survives mixing.
    # Row 0 mixes with row 15: its pixels are 0 (own) or 15 (partner) or a blend.
    row = np.asarray(out[0, ..., 0])
    own_share = 1.0 - row / 15.0  # Pixel-wise fraction of image 0.
    lam = float(own_share.mean())
    # The label weight on row 0's class is that same fraction (timm's correct_lam for cutmix).
    lam_label = (float(soft[0, 0]) - 0.01) / 0.9
    assert lam_label == pytest.approx(lam, abs=1e-4)
    if np.all((row == 0) | (row == 15)):
      cut_lams.append(lam)
    else:
      lams.append(lam)
  assert 60 < len(cut_lams) < 140  # switch_prob 0.5.
  assert abs(np.mean(lams) - 0.5) < 0.07  # Mixup: Beta(0.8, 0.8), symmetric about 1/2.
  # Cutmix: boxes clipped at the border paste less than 1 - lam, and lam is corrected up.
  assert 0.5 < np.mean(cut_lams) < 0.8


def test_mixing_off_or_prob_zero_leaves_the_batch_alone():
  images, onehot = _batch()
  out, soft = mixing.mix(images, onehot, jax.random.key(0),
                         _mixup_config(mixup_alpha=0.0, cutmix_alpha=0.0))
  assert out is images and soft is onehot
  assert not mixing.is_active(_mixup_config(mixup_alpha=0.0, cutmix_alpha=0.0))
  out, soft = mixing.mix(images, onehot, jax.random.key(0), _mixup_config(prob=0.0))
  np.testing.assert_array_equal(out, images)
  np.testing.assert_allclose(soft, onehot, atol=1e-7)


def test_mixup_only_blends_whole_images():
  images, onehot = _batch()
  out, soft = mixing.mix(images, onehot, jax.random.key(1), _mixup_config(cutmix_alpha=0.0))
  lam = 1.0 - float(out[0, 0, 0, 0]) / 15.0
  np.testing.assert_allclose(out[0], images[0] * lam + images[15] * (1 - lam), atol=1e-5)


def test_train_step_with_mixup_and_label_smoothing(tmp_path):
  from cnn_jax import train
  from helpers import load_config

  config = load_config("lenet5_digits", total_steps=4, log_every_steps=2, eval_every_steps=4,
                       label_smoothing=0.1, **{"schedule.warmup_epochs": 0.05, "data.mixup.mixup_alpha": 0.8,
                          "data.mixup.cutmix_alpha": 1.0, "mesh.num_devices": 1})
  final = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final["loss"])
