"""Data sources, one module each; `create_source(config)` picks one by `config.data.source`.

Each gives `base.Splits`: train and eval records `(image, label)` read at random, so the
pipeline (`data/pipeline.py`) can make any step's batch directly. A new source is a module
here with a `create(config) -> Splits` function and one line in `SOURCES`.

  embedded     digits shipped in pip packages and the long-range task (embedded.py, digits.py,
               long_range.py; in-memory arrays.py)
  tfds         TFDS data sets in the array_record or tfrecord format (tfds.py; tfrecord.py
               reads TFRecord shards at random through cached indexes, shard_index.py)
  imagefolder  class folders of image files (imagefolder.py)
  webdataset   WebDataset .tar shards, timm / Hugging Face layout (webdataset.py)
  synthetic    random images for benchmarks (synthetic.py)

images.py decodes the encoded sources' records and counts the corrupt ones it skips.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from cnn_jax.data.sources import embedded, imagefolder, synthetic, tfds, webdataset
from cnn_jax.data.sources.base import Records, Splits
from cnn_jax.errors import UserError

SOURCES: dict[str, Callable[[ml_collections.ConfigDict], Splits]] = {
    "embedded": embedded.create,
    "tfds": tfds.create,
    "imagefolder": imagefolder.create,
    "webdataset": webdataset.create,
    "synthetic": synthetic.create,
}


def create_source(config: ml_collections.ConfigDict) -> Splits:
  """The train and eval records of `config.data.source`."""
  kind = config.data.source
  if kind not in SOURCES:
    raise UserError(f"data.source={kind!r}; known: {', '.join(SOURCES)}")
  return SOURCES[kind](config)


__all__ = ["SOURCES", "Records", "Splits", "create_source"]
