"""WebDataset tar shards: the same images and labels as an ImageFolder twin give the same
batches; brace patterns; exact resume; disjoint processes; bad shards are one clear error."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.data.sources import webdataset
from cnn_jax.errors import UserError
from helpers import run_cli
from data_sets import NUM_CLASSES, labels_from_images, make_config, solid_value


def _encode(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, fmt)
  return buf.getvalue()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
  """(imagefolder root, shard dir): 4 classes, train 24 + val 8 images of several modes and
  formats, the tar shards holding the same files in ImageFolder's order."""
  root = tmp_path_factory.mktemp("twins")
  folder, shards = root / "folder", root / "shards"
  shards.mkdir()
  rng = np.random.default_rng(0)
  formats = [("jpg", "JPEG", "RGB"), ("png", "PNG", "L"), ("png", "PNG", "RGBA"),
             ("webp", "WEBP", "RGB")]
  for split, per_class, num_shards in (("train", 6, 2), ("val", 2, 1)):
    samples = []
    for k in range(NUM_CLASSES):
      (folder / split / f"class_{k}").mkdir(parents=True)
      for i in range(per_class):
        ext, fmt, mode = formats[(i + k) % len(formats)]
        h, w = (int(v) for v in rng.integers(16, 48, size=2))
        v = solid_value(k)
        img = Image.new(mode, (w, h), v if mode == "L" else (v, v, v, 255)[:len(mode)])
        payload = _encode(img, fmt)
        name = f"{i:03d}.{ext}"
        (folder / split / f"class_{k}" / name).write_bytes(payload)
        samples.append((f"class_{k}/{i:03d}", payload, ext, str(k).encode()))
    per_shard = -(-len(samples) // num_shards)
    for s in range(num_shards):
      webdataset.write_shard(str(shards / f"{split}-{s:04d}.tar"),
                             samples[s * per_shard:(s + 1) * per_shard])
  return str(folder), str(shards)


def _config(data_dir, index_dir, **kw):
  fields = dict(source="webdataset", name="wds", data_dir=data_dir, index_dir=str(index_dir),
                train_split="train-{0000..0001}.tar", eval_split="val-0000.tar",
                augment="imagenet", crop_scale=(0.3, 1.0), randaugment="rand-m9-mstd0.5-inc1")
  fields.update(kw)
  return make_config(**fields)


def test_webdataset_gives_the_batches_of_the_image_folder_twin(twins, tmp_path):
  folder, shards = twins
  before = sorted(os.listdir(shards))
  train, evaluation, info = data.create_datasets(_config(shards, tmp_path))
  twin = dict(source="imagefolder", train_split="train", eval_split="val")
  twin_train, twin_eval, twin_info = data.create_datasets(_config(folder, tmp_path, **twin))
  assert (info.num_classes, info.num_train, info.num_eval) == (NUM_CLASSES, 24, 8)
  assert (info.num_train, info.num_eval) == (twin_info.num_train, twin_info.num_eval)
  for step in (0, 2, 3, 7):
    got, want = train.batch(step), twin_train.batch(step)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["image"], want["image"])
  for got, want in zip(evaluation, twin_eval, strict=True):
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(labels_from_images(got["image"][got["mask"] > 0]),
                                  got["label"][got["mask"] > 0])
  assert sorted(os.listdir(shards)) == before  # Indexes go to index_dir, not the shard dir.


def test_webdataset_resume_is_exact_and_processes_are_disjoint(twins, tmp_path):
  _, shards = twins
  config = _config(shards, tmp_path, batch_size=4)
  reference = data.create_datasets(config)[0]
  expected = [reference.batch(s) for s in range(5, 9)]
  restarted = iter(data.create_datasets(config)[0].iterate(5))
  with_workers = iter(data.create_datasets(
      _config(shards, tmp_path, batch_size=4, num_workers=2, num_threads=1))[0].iterate(5))
  for want in expected:
    for it in (restarted, with_workers):
      got = next(it)
      np.testing.assert_array_equal(got["label"], want["label"])
      np.testing.assert_array_equal(got["image"], want["image"])

  from cnn_jax.data import pipeline, transforms
  from cnn_jax.data.sources.images import RecordLoader

  source = webdataset.WebDatasetSource(shards, "train-{0000..0001}.tar", index_dir=str(tmp_path))
  reads = [[] for _ in range(4)]

  class Spy:
    def __init__(self, seen):
      self.seen, self.name = seen, source.name

    def __len__(self):
      return len(source)

    def __getitem__(self, i):
      self.seen.append(int(i))
      return source[i]

  for p in range(4):
    part = pipeline.TrainBatches(RecordLoader(Spy(reads[p]), 3, "fail", "simplejpeg"),
                                 transforms.TrainTransform(config.data), global_batch_size=8,
                                 seed=1, process_index=p, process_count=4)
    for s in range(part.steps_per_epoch):
      part.batch(s)
  for p in range(4):
    for q in range(p):
      assert not set(reads[p]) & set(reads[q])
  assert sorted(sum(reads, [])) == list(range(24))  # One epoch, every sample once.


def _tar(path, members):
  with tarfile.open(path, "w") as tar:
    for name, payload in members:
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


def test_labels_from_json_and_a_corrupt_image_is_a_counted_skip(tmp_path):
  jpg = _encode(Image.new("RGB", (20, 20), (solid_value(2),) * 3), "JPEG")
  _tar(tmp_path / "a.tar", [("x0.jpeg", jpg), ("x0.json", json.dumps({"label": 2}).encode()),
                            ("x1.jpg", b"not a jpeg at all" * 4), ("x1.cls", b"1\n"),
                            ("x2.JPG", jpg), ("x2.json", b"2"), ("x2.txt", b"caption")])
  source = webdataset.WebDatasetSource(str(tmp_path), "a.tar", num_classes=3,
                                       index_dir=str(tmp_path / "ix"))
  assert list(source.labels) == [2, 1, 2]
  assert source[2] == (jpg, 2)
  config = _config(str(tmp_path), tmp_path / "ix", train_split="a.tar", eval_split="a.tar",
                   batch_size=3, augment="none", randaugment="")
  batch = data.create_datasets(config)[0].batch(0)
  # The corrupt image is replaced by the next record, as for the other sources.
  np.testing.assert_array_equal(labels_from_images(batch["image"]), batch["label"])
  assert sorted(batch["label"]) == [2, 2, 2]


def test_bad_shards_are_one_error_naming_the_file(twins, tmp_path):
  jpg = _encode(Image.new("RGB", (8, 8)), "JPEG")
  _tar(tmp_path / "nolabel.tar", [("a.jpg", jpg), ("a.cls", b"0"), ("b.jpg", jpg)])
  _tar(tmp_path / "range.tar", [("a.jpg", jpg), ("a.cls", b"7")])
  _tar(tmp_path / "text.tar", [("a.jpg", jpg), ("a.cls", b"cat")])
  (tmp_path / "broken.tar").write_bytes(b"\x00garbage" * 100)
  ix = str(tmp_path / "ix")
  cases = [("nolabel.tar", "nolabel.tar: sample 'b' has no .cls or .json label"),
           ("range.tar", "range.tar: label 7 is out of range for 4 classes"),
           ("text.tar", "text.tar: sample 'a' has no integer label"),
           ("broken.tar", "broken.tar: "),
           ("none-{0000..0003}.tar", "pattern 'none-\\{0000..0003\\}.tar' matches no file"),
           ("", "names no shard")]
  for pattern, message in cases:
    with pytest.raises(UserError, match=message):
      webdataset.WebDatasetSource(str(tmp_path), pattern, num_classes=4, index_dir=ix)
  with pytest.raises(UserError, match="is not a directory"):
    webdataset.WebDatasetSource(str(tmp_path / "missing"), "a.tar", index_dir=ix)
  before = sorted(os.listdir(tmp_path))
  result = run_cli("cnn_jax.data.prepare", "--config=configs/data_examples/imagenet_bench.py",
                   "--config.data.source=webdataset", f"--config.data.data_dir={tmp_path}",
                   "--config.data.train_split=nolabel.tar", f"--config.data.index_dir={ix}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: {tmp_path / 'nolabel.tar'}: sample 'b'")
  assert sorted(os.listdir(tmp_path)) == before
