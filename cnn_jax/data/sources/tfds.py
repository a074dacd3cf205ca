"""TFDS data sets prepared in the array_record format (random access without TensorFlow).

`data.source = "tfds"`: `data.name` is the TFDS name, `data.data_dir` its TFDS data_dir,
`data.train_split` / `data.eval_split` TFDS split syntax ("train[:90%]").
"""

from __future__ import annotations

import os

import ml_collections

from cnn_jax.data.sources.base import Splits
from cnn_jax.errors import UserError


def create(config: ml_collections.ConfigDict) -> Splits:
  data_config = config.data
  if data_config.train_fraction != 1.0:
    raise UserError("data.train_fraction is for the embedded and imagefolder sources; with "
                    "tfds set data.train_split (TFDS split syntax, e.g. \"train[:10%]\")")
  train = TfdsSource(data_config.name, data_config.data_dir, data_config.train_split)
  evaluation = TfdsSource(data_config.name, data_config.data_dir, data_config.eval_split)
  return Splits(train, evaluation, train.num_classes)



class TfdsSource:
  """One split of a prepared TFDS data set, read at random with `tfds.data_source`.

  Needs the array_record file format (`tfds build NAME --file_format=array_record`), which
  gives random access and works without TensorFlow installed.
  """

  def __init__(self, name: str, data_dir: str, split: str):
    import tensorflow_datasets as tfds

    if not data_dir:
      raise UserError("data.data_dir is empty; set it to the TFDS data_dir that holds "
                      f"{name!r}")
    if not os.path.isdir(data_dir):
      raise UserError(f"data.data_dir={data_dir!r} does not exist")
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise UserError(f"TFDS has no data set {name!r} (and {data_dir!r} holds none by that "
                      "name)") from None
    except (ValueError, KeyError) as e:
      raise UserError(f"bad TFDS name {name!r}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
      raise UserError(
          f"TFDS data set {name!r} is not prepared in {data_dir!r}; run: tfds build {name} "
          f"--data_dir={data_dir} --file_format=array_record")
    info = builder.info
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
    if info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
      raise UserError(
          f"TFDS {name!r} in {data_dir!r} is stored as {info.file_format.value}; random access "
          f"needs array_record: tfds convert_format --root_data_dir={data_dir} "
          "--out_file_format=array_record (or rebuild with --file_format=array_record)")
    try:
      self._source = builder.as_data_source(
          split=split, decoders={self.image_key: tfds.decode.SkipDecoding()})
    except (ValueError, KeyError, AssertionError) as e:
      raise UserError(f"TFDS {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    except NotImplementedError as e:
      raise UserError(f"TFDS {name!r} in {data_dir!r} is not in array_record format (needed "
                      f"for random access): {str(e).splitlines()[0]}") from None
    if len(self._source) == 0:
      raise UserError(f"TFDS {name!r} split {split!r} is empty")
    self.name = name

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    example = self._source[int(index)]
    return example[self.image_key], int(example[self.label_key])

  def describe(self, index: int) -> str:
    return f"{self.name} record {index}"


