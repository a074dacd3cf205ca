"""TFDS (a real array_record data set built on disk here), ImageFolder with bad files,
synthetic data; shards across simulated processes; exact resume of the data order."""

import glob
import io
import logging
import os
import tempfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax import config as base
from cnn_jax import data
from cnn_jax.data import pipeline, transforms
from cnn_jax.data.sources import images
from cnn_jax.errors import UserError
from data_sets import (NUM_CLASSES, TFDS_NAME, labels_from_images, make_config,
                       prepare_tfds_test_set, solid_value)
from helpers import run_cli, saved_tree

# ------------------------------------------------------------------------------------ TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return prepare_tfds_test_set(tmp_path_factory)


def test_tfds_array_record_source_with_split_syntax(tfds_dir):
  config = make_config(source="tfds", name=TFDS_NAME, data_dir=tfds_dir,
                       train_split="train[:80%]", eval_split="test")
  train, evaluation, info = data.create_datasets(config)
  assert (info.num_classes, info.num_train, info.num_eval) == (NUM_CLASSES, 32, 10)
  assert info.image_shape == (16, 16, 3)
  assert train.steps_per_epoch == 4
  labels = []
  for step in range(train.steps_per_epoch):
    batch = train.batch(step)
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    np.testing.assert_array_equal(labels_from_images(batch["image"]), batch["label"])
    labels.append(batch["label"])
  # One epoch of train[:80%] visits its 32 records once: 8 per class.
  np.testing.assert_array_equal(np.bincount(np.concatenate(labels)), [8] * NUM_CLASSES)
  batches = list(evaluation)
  assert len(batches) == 2 and batches[-1]["mask"].sum() == 2
  mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
  images = np.concatenate([b["image"] for b in batches])[mask]
  labels = np.concatenate([b["label"] for b in batches])[mask]
  np.testing.assert_array_equal(labels_from_images(images), labels)


def test_tfds_bad_input_is_one_clear_user_error(tfds_dir, tmp_path):
  good = dict(source="tfds", name=TFDS_NAME, data_dir=tfds_dir)
  with pytest.raises(UserError, match="no data set 'no_such_dataset_xyz'"):
    data.create_datasets(make_config(**{**good, "name": "no_such_dataset_xyz"}))
  with pytest.raises(UserError, match="does not exist"):
    data.create_datasets(make_config(**{**good, "data_dir": str(tmp_path / "missing")}))
  with pytest.raises(UserError, match="data_dir is empty"):
    data.create_datasets(make_config(**{**good, "data_dir": ""}))
  left_in_tmp = set(glob.glob(os.path.join(tempfile.gettempdir(), "*")))
  with pytest.raises(UserError, match="not prepared"):
    # Registered in TFDS, not on disk.
    data.create_datasets(make_config(**{**good, "name": "mnist", "data_dir": str(tmp_path)}))
  # TFDS's builder leaves an empty temporary directory on such a call; ours removes it.
  assert not {p for p in glob.glob(os.path.join(tempfile.gettempdir(), "*"))
              if p.endswith("tfds")} - left_in_tmp
  with pytest.raises(UserError, match="split"):
    data.create_datasets(make_config(**{**good, "train_split": "validation"}))
  with pytest.raises(UserError, match="split 'test\\[:0\\]' is empty"):
    data.create_datasets(make_config(**{**good, "eval_split": "test[:0]"}))


# ----------------------------------------------------------------------------- ImageFolder


def _save(img: Image.Image, path: str, fmt: str) -> None:
  img.save(path, fmt)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """train/ and val/ of 4 classes; train holds odd modes and two broken files."""
  root = tmp_path_factory.mktemp("imagefolder")
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 6), ("val", 2)):
    for k in range(NUM_CLASSES):
      d = root / split / f"class_{k}"
      d.mkdir(parents=True)
      for i in range(per_class):
        h, w = (int(v) for v in rng.integers(16, 48, size=2))
        img = Image.fromarray(np.full((h, w, 3), solid_value(k), np.uint8))
        if i % 3 == 0:
          _save(img, str(d / f"{i}.png"), "PNG")
        else:
          _save(img, str(d / f"{i}.JPEG"), "JPEG")  # Upper-case extensions count too.
  train = root / "train"
  v = solid_value(1)
  Image.new("L", (20, 24), v).save(train / "class_1" / "gray.png")
  Image.new("RGBA", (20, 24), (v, v, v, 128)).save(train / "class_1" / "rgba.png")
  # CMYK JPEG: grey level v in RGB is (0, 0, 0, 255 - v) in PIL's naive CMYK.
  Image.new("RGB", (20, 24), (v, v, v)).convert("CMYK").save(train / "class_1" / "cmyk.jpg")
  Image.new("P", (20, 24), 0).save(train / "class_1" / "palette.png")  # Black: label 1 anyway.
  (train / "class_2" / "corrupt.jpg").write_bytes(b"definitely not a jpeg" * 10)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
  (train / "class_3" / "truncated.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
  (train / "class_0" / "notes.txt").write_text("not an image: ignored")
  return str(root)


def test_image_folder_converts_modes_and_skips_corrupt_files_with_a_count(image_folder,
                                                                           caplog):
  config = make_config(source="imagefolder", name="tiny", data_dir=image_folder,
                       train_split="train", eval_split="val", on_corrupt="skip")
  config.data.batch_size = 30
  train, evaluation, info = data.create_datasets(config)
  assert info.num_classes == NUM_CLASSES and info.num_train == 6 * NUM_CLASSES + 6
  before = images.CORRUPT.count
  with caplog.at_level(logging.WARNING):
    batch = train.batch(0)  # One epoch: every record, the two broken ones included.
  assert images.CORRUPT.count - before == 2
  assert sum("skipped corrupt image" in r.message for r in caplog.records) == 2
  assert any("corrupt.jpg" in r.message for r in caplog.records)
  assert any("truncated.jpg" in r.message for r in caplog.records)
  assert batch["image"].shape == (30, 16, 16, 3)
  # Grey, RGBA, CMYK, palette were converted to RGB; every solid image decodes to its class.
  loader = images.RecordLoader(train.records.source, 3, "skip")
  for name, expect in (("gray.png", 1), ("rgba.png", 1), ("cmyk.jpg", 1)):
    index = next(i for i, p in enumerate(train.records.source.paths) if p.endswith(name))
    img, label = loader.load(index)
    assert img.mode == "RGB" and label == 1
    value = np.asarray(img).astype(float).mean()
    assert abs(value - solid_value(1)) < 3, (name, value)
  eval_batches = list(evaluation)
  assert sum(b["mask"].sum() for b in eval_batches) == 2 * NUM_CLASSES


def test_image_folder_corrupt_file_fails_when_configured(image_folder):
  config = make_config(source="imagefolder", name="tiny", data_dir=image_folder,
                       train_split="train", eval_split="val", on_corrupt="fail")
  config.data.batch_size = 30
  train, _, _ = data.create_datasets(config)
  with pytest.raises(UserError, match="corrupt image .*(corrupt|truncated).jpg"):
    train.batch(0)


def test_image_folder_bad_input_is_one_clear_user_error(image_folder, tmp_path):
  base_fields = dict(source="imagefolder", name="tiny", train_split="train", eval_split="val")
  with pytest.raises(UserError, match="not a directory"):
    data.create_datasets(make_config(data_dir=str(tmp_path / "nope"), **base_fields))
  (tmp_path / "train" / "a").mkdir(parents=True)
  (tmp_path / "train" / "b").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "x.png")
  with pytest.raises(UserError, match="holds no images"):
    data.create_datasets(make_config(data_dir=str(tmp_path), **base_fields))
  with pytest.raises(UserError, match="does not exist"):  # No val/ split.
    (tmp_path / "train" / "b" / "y.png").write_bytes((tmp_path / "train" / "a" / "x.png")
                                                    .read_bytes())
    data.create_datasets(make_config(data_dir=str(tmp_path), **base_fields))
  (tmp_path / "val" / "a").mkdir(parents=True)
  with pytest.raises(UserError, match="different classes"):
    data.create_datasets(make_config(data_dir=str(tmp_path), **base_fields))
  with pytest.raises(UserError, match="data.source"):
    data.create_datasets(make_config(source="hdf5"))


# ------------------------------------------------------- synthetic, shards, exact resume


class IndexSource:
  """Record i is a 4x4 image of value i % 251 with label i: shows which records were read."""

  name = "index"
  num_classes = 1000

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return np.full((4, 4, 3), i % 251, np.uint8), int(i)


def _index_batches(**kw):
  cfg = make_config(image_size=4, augment="imagenet", randaugment="rand-m9-mstd0.5-inc1",
                    random_erasing=0.25).data
  return pipeline.TrainBatches(images.RecordLoader(IndexSource(100), 3, "skip"),
                               transforms.TrainTransform(cfg), global_batch_size=24, seed=5,
                               **kw)


def test_process_shards_are_disjoint_and_make_the_global_batch():
  whole = _index_batches()
  steps = range(whole.steps_per_epoch)  # 4 steps of 24 out of 100 records.
  parts = [_index_batches(process_index=p, process_count=4) for p in range(4)]
  read = [np.concatenate([part.batch(s)["label"] for s in steps]) for part in parts]
  for p in range(4):
    for q in range(p):
      assert not set(read[p]) & set(read[q])  # Each process reads its own records.
  assert len(np.unique(np.concatenate(read))) == 96  # Together: one epoch, no repeats.
  for s in (0, 3, 4, 9):
    full = whole.batch(s)
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([part.batch(s)[key] for part in parts]), full[key])


def test_resume_gives_the_exact_data_order_threads_and_worker_processes():
  reference = _index_batches()
  expected = [reference.batch(s) for s in range(7, 12)]
  # A "restarted" pipeline, built anew, iterated from step 7 with read threads ...
  restarted = iter(_index_batches(num_threads=3).iterate(7))
  # ... and with grain worker processes.
  with_workers = iter(_index_batches(num_workers=2, num_threads=1).iterate(7))
  for want in expected:
    for it in (restarted, with_workers):
      got = next(it)
      np.testing.assert_array_equal(got["label"], want["label"])
      np.testing.assert_array_equal(got["image"], want["image"])
  # Epochs are reshuffled.
  assert not np.array_equal(reference.batch(0)["label"], reference.batch(4)["label"])


def test_synthetic_data_of_any_shape():
  config = make_config(source="synthetic", name="syn", image_size=20, channels=1,
                       mean=(0.5,), std=(0.25,), augment="cifar")
  config.data.synthetic.num_train, config.data.synthetic.num_classes = 64, 7
  train, evaluation, info = data.create_datasets(config)
  assert info.image_shape == (20, 20, 1) and info.num_classes == 7 and info.num_train == 64
  batch = train.batch(2)
  assert batch["image"].shape == (8, 20, 20, 1) and batch["label"].max() < 7
  np.testing.assert_array_equal(batch["image"], data.create_datasets(config)[0].batch(2)["image"])
  assert sum(b["mask"].sum() for b in evaluation) == config.data.synthetic.num_eval


@pytest.mark.parametrize("field", ["batch_size", "eval_batch_size"])
def test_a_batch_of_no_images_is_the_users_error(field):
  # Every tool that builds the data (main, bench --config, data_bench) meets it here; it was a
  # ZeroDivisionError.
  config = make_config(source="synthetic", name="syn", image_size=20, channels=1,
                       mean=(0.5,), std=(0.25,), augment="cifar")
  config.data[field] = 0
  with pytest.raises(UserError, match=f"^data.{field}=0 must be at least 1$"):
    data.create_datasets(config)


def test_data_bench_cli_prints_images_per_second():
  result = run_cli("cnn_jax.data_bench", "--config=configs/data_examples/imagenet_bench.py",
                   "--num_images=16", "--num_classes=2", "--steps=2", "--warmup_steps=1",
                   "--config.data.image_size=32", "--config.data.batch_size=8",
                   "--config.data.num_workers=0", env={"JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "images/s" in result.stdout


def test_main_cli_with_a_bad_tfds_name_is_one_line_and_exit_2(tmp_path):
  result = run_cli("cnn_jax.main", "--config=configs/lenet5_digits.py",
                   f"--workdir={tmp_path / 'run'}", "--config.data.source=tfds",
                   "--config.data.name=no_such_dataset_xyz", f"--config.data.data_dir={tmp_path}")
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "no_such_dataset_xyz" in lines[0], result.stderr[-2000:]


@pytest.mark.parametrize("name", ["imagenet_bench", "cifar10_tfds", "imagenet_tfds_convnext",
                                  "imagefolder"])
def test_example_data_configs_use_only_known_fields(name):
  from helpers import load_config

  config = load_config(f"data_examples/{name}")
  known = base.get_config().data
  assert set(config.data.keys()) == set(known.keys())
  assert set(config.data.mixup.keys()) == set(known.mixup.keys())
  transforms.TrainTransform(config.data)  # The augmentation settings are valid.
  transforms.EvalTransform(config.data)


def test_training_on_an_image_folder_resumes_to_the_same_parameters(image_folder, tmp_path):
  """The whole path: ImageFolder (with broken files) -> grain -> RandAugment -> mixup on
  device -> train step; halting at step 3 and resuming equals an uninterrupted run, bit for
  bit."""
  import jax

  from cnn_jax import train

  def run(workdir, **overrides):
    config = make_config(source="imagefolder", name="tiny", data_dir=image_folder,
                         train_split="train", eval_split="val", image_size=32,
                         augment="imagenet", randaugment="rand-m9-mstd0.5-inc1",
                         random_erasing=0.25, num_threads=2)
    config.model = ml_collections.ConfigDict(
        {"name": "lenet5", "num_classes": NUM_CLASSES, "in_channels": 3, "image_size": 32})
    config.data.mixup.mixup_alpha, config.data.mixup.cutmix_alpha = 0.8, 1.0
    config.label_smoothing = 0.1
    config.total_steps, config.log_every_steps, config.eval_every_steps = 6, 3, 6
    config.schedule.warmup_epochs = 0.5
    config.checkpoint.every_steps = 3
    config.mesh.num_devices = 2  # Sharded, but cheap to compile.
    for key, value in overrides.items():
      config[key] = value
    return train.train_and_evaluate(config, str(workdir))

  def params(workdir):
    restored = saved_tree(workdir / "checkpoints" / "6" / "default")
    return jax.tree.leaves(restored["params"])

  full = run(tmp_path / "full")
  run(tmp_path / "resumed", halt_after_steps=3)
  resumed = run(tmp_path / "resumed")
  assert full["loss"] == resumed["loss"] and np.isfinite(full["loss"])
  for a, b in zip(params(tmp_path / "full"), params(tmp_path / "resumed")):
    np.testing.assert_array_equal(a, b)


def test_prefetch_to_device_keeps_order_and_puts_batches_ahead():
  import jax

  from cnn_jax import parallel

  mesh = parallel.create_mesh(make_config())
  issued = []

  def put(batch):
    issued.append(int(batch["label"][0]))
    return parallel.shard_batch(batch, mesh)

  source = ({"image": np.full((8, 2, 2, 3), s, np.float32), "label": np.full((8,), s, np.int32)}
            for s in range(5))
  out = data.prefetch_to_device(source, put, size=2)
  first = next(out)
  assert issued == [0, 1, 2]  # Two batches on their way while the first is used.
  assert isinstance(first["image"], jax.Array) and len(first["image"].sharding.device_set) == 8
  rest = [int(b["label"][0]) for b in out]
  assert [int(first["label"][0])] + rest == [0, 1, 2, 3, 4]


def test_a_cpu_mesh_is_fed_aligned_host_arrays_that_need_no_copy_and_split_as_put_ones():
  # On a one-process CPU mesh the loop hands the step host arrays that XLA:CPU takes without a
  # copy (experiments/cpu_speed/, stop 42); the jitted step must split them over the devices as
  # it splits a batch put there.
  import jax

  from cnn_jax import parallel

  mesh = parallel.create_mesh(make_config())
  assert mesh.size == 8
  rng = np.random.default_rng(0)
  storage = np.empty(16 * 18 * 4 + 128, np.uint8)
  start = 64 - storage.ctypes.data % 64 + 4  # Off the boundary: the case that is copied.
  image = storage[start:start + 16 * 18 * 4].view(np.float32).reshape(16, 3, 3, 2)
  image[...] = rng.standard_normal(image.shape)
  batch = {"image": image, "label": np.arange(16, dtype=np.int32)}
  fed = parallel.feed_batch(batch, mesh)
  for key, value in fed.items():
    assert isinstance(value, np.ndarray) and value.ctypes.data % 64 == 0, key
    np.testing.assert_array_equal(value, batch[key])
    one_device = jax.device_put(value, jax.devices()[0])
    assert one_device.unsafe_buffer_pointer() == value.ctypes.data, f"{key} was copied"
  assert parallel.feed_batch(fed, mesh)["image"] is fed["image"]  # Aligned already: as it is.

  split = parallel.batch_sharding(mesh)
  step = jax.jit(lambda b: b["image"].sum(axis=(1, 2, 3)) * b["label"],
                 in_shardings=(split,), out_shardings=split)
  from_host = step(fed)
  from_put = step(parallel.shard_batch(batch, mesh))
  assert len(from_host.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(from_host), np.asarray(from_put))
