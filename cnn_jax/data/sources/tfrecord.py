"""TFRecord shards read at random without TensorFlow: TFDS sets in the default file format.

A TFRecord file is a sequence of records framed as

  uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

(little-endian; masked(c) = ((c >> 15 | c << 17) + 0xa282ead8) mod 2**32). Random access needs
the byte offset of every record: `ShardIndex` walks the headers once (reading 12 bytes per
record, checking each length's CRC and that the file does not end inside a record) and caches
the offsets outside the data directory (`index_dir`, default ~/.cache/cnn_jax/tfrecord_index),
keyed by the shard's path, size and modification time. A read checks the data's CRC. The records
of a TFDS set are serialized `tf.train.Example`s, parsed with the protobuf classes TFDS ships.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence

import google_crc32c
import numpy as np

from cnn_jax.data.sources import shard_index
from cnn_jax.errors import UserError

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")


def masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_tfrecord(path: str, records: Iterable[bytes]) -> None:
  """Writes `records` as one TFRecord file (temp file + rename: never half a file)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    for record in records:
      length = struct.pack("<Q", len(record))
      f.write(length + struct.pack("<I", masked_crc(length)) + record
              + struct.pack("<I", masked_crc(record)))
  os.replace(tmp, path)


def default_index_dir() -> str:
  return shard_index.default_index_dir("tfrecord_index")


def _scan(path: str) -> np.ndarray:
  """(offset of data, length) of every record in `path`; a bad frame is the user's error."""
  size = os.path.getsize(path)
  rows = []
  fd = os.open(path, os.O_RDONLY)
  try:
    offset = 0
    while offset < size:
      # 12 bytes per record, read where they are: the data in between is never read.
      header = os.pread(fd, 12, offset)
      if len(header) < 12:
        raise UserError(f"{path}: truncated TFRecord (the file ends inside the record header "
                        f"at byte {offset})")
      length, length_crc = _HEADER.unpack(header)
      if masked_crc(header[:8]) != length_crc:
        raise UserError(f"{path}: bad CRC of the record length at byte {offset} (corrupt or "
                        "not a TFRecord file)")
      end = offset + 12 + length + 4
      if end > size:
        raise UserError(f"{path}: truncated TFRecord (a {length}-byte record at byte {offset} "
                        f"runs past the end of the {size}-byte file)")
      rows.append((offset + 12, length))
      offset = end
  finally:
    os.close(fd)
  return np.asarray(rows, np.int64).reshape(-1, 2)


def build_indexes(paths: Sequence[str], index_dir: str, *, progress: bool = True
                  ) -> list[np.ndarray]:
  """The cached record indexes of TFRecord files `paths` (built once, progress bar + ETA)."""
  return shard_index.cached_indexes(paths, index_dir or default_index_dir(), _scan, "tfrecord",
                                    progress=progress)


class TFRecordReader(shard_index.ShardFiles):
  """Records [skip, skip + take) of each of `shards` as one random-access sequence of bytes.

  Picklable (grain worker processes): files are opened on first read in each process.
  """

  def __init__(self, shards: Sequence[tuple[str, int, int]], index_dir: str = "",
               expected_counts: Sequence[int] | None = None, progress: bool = True):
    paths = [path for path, _, _ in shards]
    for path in paths:
      if not os.path.isfile(path):
        raise UserError(f"TFRecord shard {path} does not exist")
    indexes = build_indexes(paths, index_dir, progress=progress)
    parts = []
    for i, ((path, skip, take), rows) in enumerate(zip(shards, indexes)):
      if expected_counts is not None and len(rows) != expected_counts[i]:
        raise UserError(f"{path}: holds {len(rows)} records, the data set's metadata says "
                        f"{expected_counts[i]} (a partly written or replaced shard?)")
      if skip + take > len(rows):
        raise UserError(f"{path}: holds {len(rows)} records, need records [{skip}, "
                        f"{skip + take})")
      part = np.empty((take, 3), np.int64)
      part[:, 0] = i
      part[:, 1:] = rows[skip:skip + take]
      parts.append(part)
    self.paths = paths
    self.records = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> bytes:
    shard, offset, length = (int(v) for v in self.records[index])
    blob = self.read(shard, length + 4, offset)
    data = blob[:length]
    if len(blob) != length + 4 or struct.unpack("<I", blob[length:])[0] != masked_crc(data):
      raise UserError(f"{self.paths[shard]}: bad CRC of the record at byte {offset - 12} "
                      "(the shard changed or is corrupt)")
    return data

  def describe(self, index: int) -> str:
    shard, offset, _ = (int(v) for v in self.records[index])
    return f"{self.paths[shard]} record at byte {offset - 12}"


def parse_example(serialized: bytes, image_key: str, label_key: str) -> tuple[bytes, int]:
  """(encoded image, integer label) of a serialized tf.train.Example."""
  from tensorflow_datasets.proto import tf_example_pb2

  feature = tf_example_pb2.Example.FromString(serialized).features.feature
  return feature[image_key].bytes_list.value[0], int(feature[label_key].int64_list.value[0])
