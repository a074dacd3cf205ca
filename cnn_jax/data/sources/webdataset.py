"""WebDataset `.tar` shards (timm / Hugging Face layout) as a random-access source.

A sample is the group of tar members sharing a key (`KEY.jpg` + `KEY.cls`, as webdataset
groups them): the image is the `.jpg|.jpeg|.png|.webp` member, the label the integer in `.cls`
or the "label" (or "cls") field of `.json`. Each shard is scanned once (member headers and the
small label files) into an index of (image offset, image size, label), cached outside the shard
directory (`data.index_dir`, default ~/.cache/cnn_jax/webdataset_index); a read is then one
`pread`. webdataset's own random-access reader (`wids`) imports PyTorch, so the index is built
with the standard library's tarfile; shard names expand with webdataset's brace syntax.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence

import ml_collections
import numpy as np

from cnn_jax.data.sources import shard_index
from cnn_jax.data.sources.base import Splits
from cnn_jax.errors import UserError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def create(config: ml_collections.ConfigDict) -> Splits:
  data_config = config.data
  if data_config.train_fraction != 1.0:
    raise UserError("data.train_fraction is for the embedded and imagefolder sources; with "
                    "webdataset name fewer shards in data.train_split")
  train = WebDatasetSource(data_config.data_dir, data_config.train_split,
                           num_classes=data_config.num_classes, index_dir=data_config.index_dir)
  evaluation = WebDatasetSource(data_config.data_dir, data_config.eval_split,
                                num_classes=train.num_classes, index_dir=data_config.index_dir)
  return Splits(train, evaluation, train.num_classes)


def expand_shards(data_dir: str, pattern: str) -> list[str]:
  """Paths of the shards `pattern` (a name or brace pattern, `train-{0000..1023}.tar`) names."""
  from webdataset.shardlists import expand_urls

  if not data_dir or not os.path.isdir(data_dir):
    raise UserError(f"data.data_dir={data_dir!r} is not a directory; it should hold the .tar "
                    "shards")
  names = expand_urls(pattern) if pattern else []
  if not names:
    raise UserError(f"the shard pattern {pattern!r} names no shard")
  paths = [os.path.join(data_dir, name) for name in names]
  missing = [p for p in paths if not os.path.isfile(p)]
  if len(missing) == len(paths):
    raise UserError(f"the shard pattern {pattern!r} matches no file in {data_dir!r} "
                    f"(looked for {missing[0]})")
  if missing:
    raise UserError(f"shard {missing[0]} does not exist ({len(missing)} of the {len(paths)} "
                    f"shards of {pattern!r} are missing)")
  return paths


def _label(path: str, key: str, ext: str, payload: bytes) -> int:
  try:
    if ext == "cls":
      return int(payload.decode().strip())
    value = json.loads(payload)
    value = value.get("label", value.get("cls")) if isinstance(value, dict) else value
    return int(value)
  except (ValueError, TypeError, UnicodeDecodeError):
    raise UserError(f"{path}: sample {key!r} has no integer label in its .{ext} member "
                    f"({payload[:40]!r})") from None


def scan_shard(path: str) -> np.ndarray:
  """(image offset, image size, label) of every sample of one tar shard, in member order."""
  from webdataset.tariterators import base_plus_ext

  samples: dict[str, dict] = {}
  try:
    with tarfile.open(path, "r:") as tar:
      for member in tar:
        if not member.isfile():
          continue
        key, ext = base_plus_ext(member.name)
        if key is None:
          continue
        ext = ext.lower()
        sample = samples.setdefault(key, {})
        if ext in IMAGE_EXTENSIONS:
          sample["image"] = (member.offset_data, member.size)
        elif ext in ("cls", "json") and "label" not in sample:
          tar.fileobj.seek(member.offset_data)
          sample["label"] = _label(path, key, ext, tar.fileobj.read(member.size))
  except (tarfile.TarError, OSError, EOFError) as e:
    raise UserError(f"{path}: not a readable tar shard ({e})") from None
  rows = []
  for key, sample in samples.items():
    if "image" not in sample and "label" not in sample:
      continue  # Members of other kinds only (e.g. a .txt caption set): not a sample.
    if "label" not in sample:
      raise UserError(f"{path}: sample {key!r} has no .cls or .json label")
    if "image" not in sample:
      raise UserError(f"{path}: sample {key!r} has no image "
                      f"(.{', .'.join(IMAGE_EXTENSIONS)})")
    rows.append((*sample["image"], sample["label"]))
  if not rows:
    raise UserError(f"{path}: no samples (image + .cls/.json label) in this shard")
  return np.asarray(rows, np.int64)


class WebDatasetSource(shard_index.ShardFiles):
  """The samples of `pattern`'s shards in `data_dir`, read at random: (image bytes, label)."""

  def __init__(self, data_dir: str, pattern: str, *, num_classes: int = 0, index_dir: str = "",
               progress: bool = True):
    self.paths = expand_shards(data_dir, pattern)
    indexes = shard_index.cached_indexes(
        self.paths, index_dir or shard_index.default_index_dir("webdataset_index"), scan_shard,
        "WebDataset", progress=progress)
    self.records = np.concatenate(
        [np.column_stack([np.full(len(rows), i), rows]) for i, rows in enumerate(indexes)])
    labels = self.records[:, 3]
    self.num_classes = num_classes or int(labels.max()) + 1
    bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
    if len(bad):
      shard, label = int(self.records[bad[0], 0]), int(labels[bad[0]])
      raise UserError(f"{self.paths[shard]}: label {label} is out of range for "
                      f"{self.num_classes} classes (data.num_classes)")
    self.labels = labels.astype(np.int32)
    self.name = f"{os.path.basename(data_dir.rstrip('/'))}/{pattern}"

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int):
    shard, offset, size, label = (int(v) for v in self.records[index])
    return self.read(shard, size, offset), label

  def describe(self, index: int) -> str:
    shard, offset = (int(v) for v in self.records[index, :2])
    return f"{self.paths[shard]} member at byte {offset}"


def write_shard(path: str, samples: Sequence[tuple[str, bytes, str, bytes]]) -> None:
  """Writes (key, image bytes, image extension, label member bytes (.cls)) samples as a tar."""
  import io

  tmp = f"{path}.tmp{os.getpid()}"
  with tarfile.open(tmp, "w") as tar:
    for key, image, ext, cls in samples:
      for name, payload in ((f"{key}.{ext}", image), (f"{key}.cls", cls)):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
  os.replace(tmp, path)
