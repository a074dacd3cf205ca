"""The fast train decode path: simplejpeg decodes as PIL does, a reduced-size decode is only
taken when the crop allows, uint8 batches normalised on device equal the host path."""

import io

import jax
import numpy as np
import pytest
from PIL import Image

from cnn_jax import config as base
from cnn_jax.data import mixing, transforms
from cnn_jax.data.sources.images import CorruptImage, EncodedImage
from cnn_jax.errors import UserError
from helpers import losses as run_losses


def _jpeg(size=(300, 200), mode="RGB", seed=0, smoothness=8) -> bytes:
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (size[1] // smoothness, size[0] // smoothness, 3),
                       dtype=np.uint8)
  img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).convert(mode)
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=90)
  return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_simplejpeg_decodes_as_pil(mode):
  payload = _jpeg(mode=mode)
  pil = np.asarray(EncodedImage(payload, 3, "pil").decode(), np.int16)
  fast = EncodedImage(payload, 3, "simplejpeg")
  assert fast.size == (300, 200)
  got = np.asarray(fast.decode(), np.int16)
  assert got.shape == pil.shape == (200, 300, 3)
  # Both are libjpeg-turbo with its default (accurate) IDCT and fancy upsampling.
  assert np.abs(got - pil).max() <= 1


def test_reduced_decode_never_goes_below_the_asked_size():
  payload = _jpeg((640, 480))
  for decoder in ("simplejpeg", "pil"):
    img = EncodedImage(payload, 3, decoder).decode((300, 200))
    assert img.size[0] >= 300 and img.size[1] >= 200 and img.size[0] < 640
    assert EncodedImage(payload, 3, decoder).decode().size == (640, 480)
  with pytest.raises(CorruptImage):
    EncodedImage(payload[:len(payload) // 3], 3, "simplejpeg").decode()


def _config(**fields):
  config = base.get_config()
  config.data.image_size = 64
  config.data.augment = "imagenet"
  config.data.randaugment = "rand-m9-mstd0.5-inc1"
  for key, value in fields.items():
    config.data[key] = value
  return config.data


def test_reduced_decode_is_close_to_the_full_decode_and_keeps_the_crop():
  payload = _jpeg((640, 480), seed=3)
  full = transforms.TrainTransform(_config(reduced_decode=0.0))
  reduced = transforms.TrainTransform(_config(reduced_decode=2.0))
  diffs = []
  for i in range(20):
    a = full(EncodedImage(payload, 3, "simplejpeg"), np.random.default_rng(i))
    b = reduced(EncodedImage(payload, 3, "simplejpeg"), np.random.default_rng(i))
    diffs.append(np.abs(a - b).mean())
  # Same crop, flip and RandAugment draws; pixels differ by the decode's filtering only.
  assert np.median(diffs) < 0.1 and max(diffs) > 0  # ~0.02 of a normalised unit typical


def test_uint8_batches_normalised_on_device_equal_the_host_path():
  payloads = [_jpeg((int(w), int(h)), seed=i) for i, (w, h) in
              enumerate(np.random.default_rng(0).integers(100, 400, (8, 2)))]
  host = transforms.TrainTransform(_config(random_erasing=0.5))
  device = transforms.TrainTransform(_config(random_erasing=0.5, normalise_on_device=True))
  host_images, images, boxes = [], [], []
  for i, payload in enumerate(payloads):
    host_images.append(host(EncodedImage(payload, 3), np.random.default_rng(i)))
    image, box = device(EncodedImage(payload, 3), np.random.default_rng(i))
    assert image.dtype == np.uint8
    images.append(image)
    boxes.append(box)
  boxes = np.stack(boxes)
  assert (boxes[:, 2] > 0).any() and (boxes[:, 2] == 0).any()  # Some erased, some not.
  mean, std = tuple(base.get_config().data.mean), tuple(base.get_config().data.std)
  out = np.asarray(mixing.normalise_on_device(np.stack(images), boxes, jax.random.key(0),
                                              mean, std))
  want = np.stack(host_images)
  for i, (top, left, h, w) in enumerate(boxes):
    inside = np.zeros(out.shape[1:3], bool)
    inside[top:top + h, left:left + w] = True
    np.testing.assert_allclose(out[i][~inside], want[i][~inside], rtol=1e-5, atol=1e-5)
    if h:  # The erased box is N(0, 1) noise on both paths (drawn by different generators).
      assert abs(out[i][inside].std() - 1) < 0.2 and abs(want[i][inside].std() - 1) < 0.2


def test_data_bench_compares_sources_and_decode_paths_on_the_same_images(tmp_path):
  from helpers import run_cli

  result = run_cli("cnn_jax.data_bench", "--config=configs/data_examples/imagenet_bench.py",
                   "--num_images=16", "--num_classes=2", "--steps=1", "--warmup_steps=1",
                   "--config.data.image_size=32", "--config.data.batch_size=8",
                   "--formats=imagefolder,tfrecord,webdataset",
                   "--variants=before,after,opencv",
                   # TFDS's builder leaves a temporary directory behind: in tmp_path.
                   env={"JAX_PLATFORMS": "cpu", "TMPDIR": str(tmp_path)})
  assert result.returncode == 0, result.stderr[-2000:]
  rows = result.stdout.split("medians over 1 rounds")[1].strip().splitlines()[1:]
  assert [row.split()[:2] for row in rows] == [
      [fmt, variant] for fmt in ("imagefolder", "tfrecord", "webdataset")
      for variant in ("before", "after", "opencv")]
  assert "source=tfds" in result.stdout and "source=webdataset" in result.stdout
  assert "train_resampling=opencv" in result.stdout and "train_resampling=pil" in result.stdout


@pytest.mark.slow  # ~20 s alone, about a minute on a loaded 2-core machine
def test_training_on_uint8_batches_equals_host_normalised_batches(tmp_path):
  """The same run with data.normalise_on_device on and off (no erasing): same losses."""
  import ml_collections

  from cnn_jax import train
  from cnn_jax.data_bench import write_jpegs

  write_jpegs(str(tmp_path / "jpegs"), 32, 2)
  losses = {}
  for on_device in (False, True):
    config = base.get_config()
    config.model = ml_collections.ConfigDict(
        {"name": "lenet5", "num_classes": 2, "in_channels": 3})
    config.data.update(source="imagefolder", name="jpegs", data_dir=str(tmp_path / "jpegs"),
                       train_split="train", eval_split="val", image_size=32, batch_size=8,
                       eval_batch_size=8, num_threads=1, randaugment="rand-m9-mstd0.5-inc1",
                       normalise_on_device=on_device)
    config.update(total_steps=3, log_every_steps=1, eval_every_steps=3)
    from cnn_jax import data
    batch = data.create_datasets(config)[0].batch(0)
    assert batch["image"].dtype == (np.uint8 if on_device else np.float32)
    workdir = tmp_path / f"run{on_device}"
    train.train_and_evaluate(config, str(workdir))
    losses[on_device] = run_losses(workdir)
  assert len(losses[True]) == 3
  np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


# ------------------------------------------------------------ data.train_resampling = opencv


@pytest.mark.parametrize("randaugment", ["", "rand-m9-mstd0.5-inc1"])
def test_opencv_resampling_makes_the_same_crops_close_to_pil(randaugment):
  """Same boxes, flips and RandAugment draws as the PIL path (the generators stay in step);
  on a smooth image the pixels differ by the resampling kernels only (and, for reduced-size
  decodes, by snapping the box to the reduced pixel grid)."""
  payload = _jpeg((640, 480), seed=5, smoothness=64)
  fields = {"randaugment": randaugment, "normalise_on_device": True, "random_erasing": 0.25}
  pil = transforms.TrainTransform(_config(**fields))
  fast = transforms.TrainTransform(_config(train_resampling="opencv", **fields))
  diffs = []
  for i in range(40):
    rng_pil, rng_fast = np.random.default_rng(i), np.random.default_rng(i)
    a, box_a = pil(EncodedImage(payload, 3), rng_pil)
    b, box_b = fast(EncodedImage(payload, 3), rng_fast)
    assert b.dtype == np.uint8 and b.shape == a.shape == (64, 64, 3)
    np.testing.assert_array_equal(box_a, box_b)
    assert rng_pil.random() == rng_fast.random()
    diffs.append(np.abs(a.astype(np.int16) - b).mean())
  # A flip or a crop elsewhere would differ by tens of grey levels; the kernels by about one.
  assert np.median(diffs) < 2 and max(diffs) > 0
  if not randaugment:
    assert max(diffs) < 4


def test_opencv_affine_has_pils_geometry():
  """On a linear ramp both bicubic kernels are exact, so inside the image the output is the ramp
  at the source point PIL's convention gives: OpenCV rounds it, PIL truncates it. A half-pixel
  error in the conversion would cost 0.5-1.5 grey levels everywhere."""
  y, x = np.mgrid[0:64, 0:64]
  ramp = np.repeat((2 * x + y + 10).astype(np.uint8)[..., None], 3, axis=-1)
  img = Image.fromarray(ramp)
  rng = np.random.default_rng(0)
  for name, matrix_fn in transforms._AFFINE_OPS.items():
    matrix = matrix_fn(64, 64, 9.0, rng)
    want = np.asarray(img.transform((64, 64), Image.Transform.AFFINE, matrix,
                                    resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)))
    got = transforms.opencv_affine(ramp, matrix, Image.Resampling.BICUBIC, (0, 0, 0))
    a, b, c, d, e, f = matrix
    # PIL: output pixel centres (x + 0.5) map to input coordinates with centres at + 0.5.
    sx = a * (x + .5) + b * (y + .5) + c - .5
    sy = d * (x + .5) + e * (y + .5) + f - .5
    inside = (sx > 3) & (sx < 60) & (sy > 3) & (sy < 60)
    assert inside.mean() > 0.3, name
    exact = (2 * sx + sy + 10)[inside][:, None]
    pil_error, cv_error = want[inside] - exact, got[inside] - exact
    # Truncated (in [-1, 0] on average): the convention is right, not a pixel off.
    assert -1 < pil_error.mean() <= 0 and np.abs(pil_error).max() < 1.5, name
    # Rounded (OpenCV's coordinates are fixed point, 1/32 px): centred on the exact value.
    assert np.abs(cv_error).max() < 0.75 and abs(cv_error.mean()) < 0.25, name
  # Rotate's matrix is PIL's own rotate about the centre.
  np.testing.assert_array_equal(
      np.asarray(img.rotate(27.0, resample=Image.Resampling.BICUBIC)),
      np.asarray(img.transform((64, 64), Image.Transform.AFFINE,
                               transforms.rotate_matrix(64, 64, 27.0),
                               resample=Image.Resampling.BICUBIC)))


def test_opencv_resampling_on_grayscale_and_decoded_images_and_bad_names():
  data = _config(train_resampling="opencv", channels=1, mean=(0.5,), std=(0.25,))
  out = transforms.TrainTransform(data)(EncodedImage(_jpeg(mode="L"), 1),
                                        np.random.default_rng(0))
  assert out.shape == (64, 64, 1) and out.dtype == np.float32
  img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 90, 3), np.uint8))
  fast = transforms.TrainTransform(_config(train_resampling="opencv"))
  np.testing.assert_array_equal(fast(img, np.random.default_rng(1)),
                                fast(img, np.random.default_rng(1)))  # Pure in the rng.
  with pytest.raises(UserError, match="train_resampling"):
    transforms.TrainTransform(_config(train_resampling="cv2"))
