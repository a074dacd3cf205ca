"""TFDS data sets, in the array_record or the default tfrecord format, without TensorFlow.

`data.source = "tfds"`: `data.name` is the TFDS name, `data.data_dir` its TFDS data_dir,
`data.train_split` / `data.eval_split` TFDS split syntax ("train[:90%]"). array_record sets are
read with `tfds.data_source`; tfrecord sets through a per-shard index of record offsets
(tfrecord.py), built on first use or by `python -m cnn_jax.data.prepare`, cached in
`data.index_dir` (nothing is written into data_dir).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import ml_collections

from cnn_jax.data.sources.base import Splits
from cnn_jax.data.sources.tfrecord import TFRecordReader, parse_example
from cnn_jax.errors import UserError


def create(config: ml_collections.ConfigDict) -> Splits:
  data_config = config.data
  if data_config.train_fraction != 1.0:
    raise UserError("data.train_fraction is for the embedded and imagefolder sources; with "
                    "tfds set data.train_split (TFDS split syntax, e.g. \"train[:10%]\")")
  train = TfdsSource(data_config.name, data_config.data_dir, data_config.train_split,
                     data_config.index_dir)
  evaluation = TfdsSource(data_config.name, data_config.data_dir, data_config.eval_split,
                          data_config.index_dir)
  return Splits(train, evaluation, train.num_classes)



def builder(name: str, data_dir: str | None) -> Any:
  """`tfds.builder(name, data_dir=data_dir)`, without the empty directory that TFDS leaves in
  /tmp on every call for a data set not prepared there (DatasetInfo.initialize_from_bucket
  makes it and never removes it)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  scratch = tempfile.mkdtemp(prefix="cnn_jax_tfds_")
  previous = tempfile.tempdir
  tempfile.tempdir = scratch
  try:
    return tfds.builder(name, data_dir=data_dir)
  finally:
    tempfile.tempdir = previous
    shutil.rmtree(scratch, ignore_errors=True)


class TfdsSource:
  """One split of a prepared TFDS data set (array_record or tfrecord), read at random."""

  def __init__(self, name: str, data_dir: str, split: str, index_dir: str = ""):
    import tensorflow_datasets as tfds

    if not data_dir:
      raise UserError("data.data_dir is empty; set it to the TFDS data_dir that holds "
                      f"{name!r}")
    if not os.path.isdir(data_dir):
      raise UserError(f"data.data_dir={data_dir!r} does not exist")
    try:
      dataset = builder(name, data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise UserError(f"TFDS has no data set {name!r} (and {data_dir!r} holds none by that "
                      "name)") from None
    except (ValueError, KeyError) as e:
      raise UserError(f"bad TFDS name {name!r}: {str(e).splitlines()[0]}") from None
    if not dataset.is_prepared():
      raise UserError(
          f"TFDS data set {name!r} is not prepared in {data_dir!r}; run: tfds build {name} "
          f"--data_dir={data_dir}")
    info = dataset.info
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
    self.name = name
    if info.file_format == tfds.core.FileFormat.TFRECORD:
      self._source = _tfrecord_split(info, split, index_dir)
    elif info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
      try:
        self._source = dataset.as_data_source(
            split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})
      except (ValueError, KeyError, AssertionError) as e:
        raise UserError(f"TFDS {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    else:
      raise UserError(
          f"TFDS {name!r} in {data_dir!r} is stored as {info.file_format.value}; cnn_jax reads "
          "array_record and tfrecord (rebuild with --file_format=array_record)")
    if len(self._source) == 0:
      raise UserError(f"TFDS {name!r} split {split!r} is empty")

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    if isinstance(self._source, TFRecordReader):
      return parse_example(self._source[int(index)], self.image_key, self.label_key)
    example = self._source[int(index)]
    return example[self.image_key], int(example[self.label_key])

  def describe(self, index: int) -> str:
    if isinstance(self._source, TFRecordReader):
      return self._source.describe(int(index))
    return f"{self.name} record {index}"


def _tfrecord_split(info, split: str, index_dir: str) -> TFRecordReader:
  """The records of `split` (TFDS split syntax) of a tfrecord-format set, at random access."""
  try:
    instructions = info.splits[split].file_instructions
  except (ValueError, KeyError, AssertionError) as e:
    raise UserError(f"TFDS {info.name!r} split {split!r}: {str(e).splitlines()[0]}") from None
  return TFRecordReader([(os.fspath(fi.filename), fi.skip, fi.take) for fi in instructions],
                        index_dir, expected_counts=[fi.examples_in_shard for fi in instructions])


