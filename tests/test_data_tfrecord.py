"""TFDS sets in the default tfrecord format, read without TensorFlow: the same records as the
array_record twin give the same batches; exact resume; disjoint processes; corrupt shards are
one clear error; the index cache never writes into the data directory."""

import json
import os
import struct

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data.sources import shard_index, tfrecord
from cnn_jax.data.sources.tfds import TfdsSource
from cnn_jax.errors import UserError
from helpers import run_cli
from data_sets import TFDS_NAME as NAME
from data_sets import labels_from_images, make_config, prepare_tfds_test_set


def test_masked_crc_is_tensorflows():
  # crc32c("123456789") = 0xE3069283 (the CRC-32C check value); TFRecord stores
  # ((crc >> 15) | (crc << 17)) + 0xa282ead8 (tensorflow/core/lib/hash/crc32c.h).
  crc = 0xE3069283
  assert tfrecord.masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def _listing(root) -> dict:
  return {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
          for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return prepare_tfds_test_set(tmp_path_factory)


@pytest.fixture(scope="module")
def tfrecord_dir(tfds_dir, tmp_path_factory):
  """The array_record test set rewritten as TFDS writes tfrecord: same serialized Examples,
  `NAME-SPLIT.tfrecord-0000X-of-0000N` shards, fileFormat "tfrecord" in dataset_info.json."""
  from array_record.python.array_record_module import ArrayRecordReader

  src = os.path.join(tfds_dir, NAME, "1.0.0")
  root = tmp_path_factory.mktemp("tfds_tfrecord")
  dst = root / NAME / "1.0.0"
  dst.mkdir(parents=True)
  for name in os.listdir(src):
    if ".array_record-" in name:
      reader = ArrayRecordReader(os.path.join(src, name))
      records = reader.read_all()
      reader.close()
      tfrecord.write_tfrecord(str(dst / name.replace(".array_record-", ".tfrecord-")), records)
  info = json.load(open(os.path.join(src, "dataset_info.json")))
  info["fileFormat"] = "tfrecord"
  (dst / "dataset_info.json").write_text(json.dumps(info))
  (dst / "features.json").write_text(open(os.path.join(src, "features.json")).read())
  return str(root)


def _config(data_dir, index_dir, **kw):
  fields = dict(source="tfds", name=NAME, data_dir=str(data_dir), index_dir=str(index_dir),
                train_split="train[:80%]", eval_split="test", augment="imagenet",
                crop_scale=(0.3, 1.0))
  fields.update(kw)
  return make_config(**fields)


def test_tfrecord_gives_the_batches_of_the_array_record_twin(tfds_dir, tfrecord_dir,
                                                             tmp_path):
  before = _listing(tfrecord_dir)
  twin_train, twin_eval, twin_info = data.create_datasets(_config(tfds_dir, tmp_path / "unused"))
  train, evaluation, info = data.create_datasets(_config(tfrecord_dir, tmp_path / "index"))
  assert info == twin_info and (info.num_train, info.num_eval) == (32, 10)
  for step in (0, 3, 5):
    got, want = train.batch(step), twin_train.batch(step)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(labels_from_images(got["image"]), got["label"])
  for got, want in zip(evaluation, twin_eval, strict=True):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(got[key], want[key])
  assert _listing(tfrecord_dir) == before  # Nothing written next to the data ...
  assert len(os.listdir(tmp_path / "index")) == 2  # ... one cached index per shard instead.


def test_tfrecord_resume_is_exact_and_processes_are_disjoint(tfrecord_dir, tmp_path):
  config = _config(tfrecord_dir, tmp_path, train_split="train", batch_size=8)
  whole = data.create_datasets(config)[0]
  expected = [whole.batch(s) for s in range(6, 9)]
  restarted = iter(data.create_datasets(config)[0].iterate(6))
  for want in expected:
    got = next(restarted)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  from cnn_jax.data import pipeline, transforms
  from cnn_jax.data.sources.images import RecordLoader

  source = TfdsSource(NAME, tfrecord_dir, "train", str(tmp_path))

  class Spy:  # Which records a process reads.
    name = source.name

    def __init__(self):
      self.seen = set()

    def __len__(self):
      return len(source)

    def __getitem__(self, i):
      self.seen.add(int(i))
      return source[i]

  read = []
  for p in range(4):
    spy = Spy()
    part = pipeline.TrainBatches(RecordLoader(spy, 3, "fail", "simplejpeg"),
                                 transforms.TrainTransform(config.data), global_batch_size=8,
                                 seed=3, process_index=p, process_count=4)
    for s in range(part.steps_per_epoch):
      part.batch(s)
    read.append(spy.seen)
  for p in range(4):
    for q in range(p):
      assert not read[p] & read[q]
  assert len(set().union(*read)) == 40  # One epoch: every record once.


def _shard(root) -> str:
  d = os.path.join(root, NAME, "1.0.0")
  return os.path.join(d, next(n for n in os.listdir(d) if "-train.tfrecord-" in n))


def _corrupt_copy(tfrecord_dir, tmp_path, edit) -> str:
  import shutil

  root = str(tmp_path / "corrupt")
  shutil.copytree(tfrecord_dir, root)
  path = _shard(root)
  blob = bytearray(open(path, "rb").read())
  open(path, "wb").write(edit(blob))
  return root


def test_truncated_or_bad_crc_shards_are_one_error_naming_the_file(tfrecord_dir, tmp_path):
  truncated = _corrupt_copy(tfrecord_dir, tmp_path / "t", lambda b: b[:-7])
  with pytest.raises(UserError, match=f"{_shard(truncated)}: truncated TFRecord"):
    data.create_datasets(_config(truncated, tmp_path / "i1"))
  assert not os.path.exists(tmp_path / "i1") or not os.listdir(tmp_path / "i1")  # No index.

  def flip_length(blob):
    blob[0] ^= 1
    return blob
  bad_length = _corrupt_copy(tfrecord_dir, tmp_path / "l", flip_length)
  with pytest.raises(UserError, match=f"{_shard(bad_length)}: bad CRC of the record length"):
    data.create_datasets(_config(bad_length, tmp_path / "i2"))

  def flip_data(blob):
    length = struct.unpack("<Q", blob[:8])[0]
    blob[12 + length // 2] ^= 0xFF
    return blob
  bad_data = _corrupt_copy(tfrecord_dir, tmp_path / "d", flip_data)
  source = TfdsSource(NAME, bad_data, "train", str(tmp_path / "i3"))
  with pytest.raises(UserError, match=f"{_shard(bad_data)}: bad CRC of the record at byte 0"):
    source[0]
  source[1]  # The other records read fine.


def test_prepare_cli_indexes_once_and_fails_in_one_line(tfrecord_dir, tmp_path):
  args = ["--config=configs/data_examples/imagenet_tfds_convnext.py",
          f"--config.data.name={NAME}", f"--config.data.data_dir={tfrecord_dir}",
          f"--config.data.index_dir={tmp_path / 'index'}", "--config.data.eval_split=test"]
  result = run_cli("cnn_jax.data.prepare", *args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "40 train records" in result.stdout and "10 eval records" in result.stdout
  assert len(os.listdir(tmp_path / "index")) == 2
  truncated = _corrupt_copy(tfrecord_dir, tmp_path / "t", lambda b: b[:-3])
  before = _listing(truncated)
  result = run_cli("cnn_jax.data.prepare", *args, f"--config.data.data_dir={truncated}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and _shard(truncated) in lines[-1]
  assert "Traceback" not in result.stderr
  assert _listing(truncated) == before


def test_an_interrupted_index_build_leaves_nothing_that_looks_complete(tfrecord_dir, tmp_path,
                                                                       monkeypatch):
  def interrupted_save(file, rows):
    file.write(b"\x93NUMPY partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(shard_index.np, "save", interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    tfrecord.build_indexes([_shard(tfrecord_dir)], str(tmp_path))
  assert os.listdir(tmp_path) == []
  monkeypatch.undo()
  rows, = tfrecord.build_indexes([_shard(tfrecord_dir)], str(tmp_path))
  assert len(rows) == 40 and rows[0, 0] == 12
