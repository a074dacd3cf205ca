"""Input pipelines: `create_datasets(config)` -> train batches, eval batches, dataset info.

`config.data.source` picks the source (`sources.create_source`, one module per source in
data/sources/), which gives train and eval records read at random; every source then goes
through the same grain pipeline (`pipeline.TrainBatches` / `pipeline.EvalBatches`) with its
transforms: the embedded sets' random shift and normalisation with their own statistics
(`transforms.ArrayTrainTransform`), or decoding (`sources.images.RecordLoader`) and the
`data.augment` chain (`transforms.TrainTransform`) for encoded images.
Training batches are a pure function of (seed, step): the batch at step s is the same
whether the run started at 0 or resumed at s, so exact resume needs no iterator state in
the checkpoint. Each process builds only its own rows of the global batch.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from cnn_jax.data import mixing, pipeline, sources, transforms
from cnn_jax.data.pipeline import EvalBatches, TrainBatches, prefetch_to_device
from cnn_jax.data.sources.images import RecordLoader
from cnn_jax.errors import UserError

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int


def create_datasets(config: ml_collections.ConfigDict
                    ) -> tuple[TrainBatches, EvalBatches, DatasetInfo]:
  """Builds this process's train and eval pipelines from `config.data` and `config.seed`.

  Returns (train, eval, info): `train.batch(step)` / `train.iterate(start_step)` give
  host-local {"image": float32 NHWC, "label": int32} batches (with `data.crop_on_device`,
  {"crop_index", "crop_offset", "label"}, cut from `train.resident()` in the step by
  `mixing.cut_crops`); iterating `eval` gives fixed-size
  {"image", "label", "mask"} batches; `info` is a DatasetInfo.
  """
  data_config = config.data
  if data_config.normalise_on_device and config.get("task", "classification") != "classification":
    raise UserError("data.normalise_on_device is for classification training; set it False "
                    f"for task={config.task!r}")
  splits = sources.create_source(config)
  if splits.statistics is not None:  # In-memory float images: shift, own normalisation.
    train_records, eval_records = splits.train, splits.eval
    train_transform = transforms.ArrayTrainTransform(data_config.max_shift, *splits.statistics)
    eval_transform = transforms.ArrayEvalTransform(*splits.statistics)
    image_shape = tuple(splits.train.images.shape[1:])
  else:  # Encoded images: decoded in the pipeline's workers, augmented per data.augment.
    train_records = RecordLoader(splits.train, data_config.channels, data_config.on_corrupt,
                                 data_config.decoder)
    # Eval decodes with PIL: timm's eval transform, pixel for pixel.
    eval_records = RecordLoader(splits.eval, data_config.channels, data_config.on_corrupt)
    train_transform = transforms.TrainTransform(data_config)
    eval_transform = transforms.EvalTransform(data_config)
    image_shape = (data_config.image_size, data_config.image_size, data_config.channels)
  common = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                num_workers=data_config.num_workers, num_threads=data_config.num_threads,
                prefetch_batches=data_config.prefetch_batches)
  train = TrainBatches(train_records, train_transform, global_batch_size=data_config.batch_size,
                       seed=config.seed, crop_on_device=data_config.crop_on_device, **common)
  evaluation = EvalBatches(eval_records, eval_transform, image_shape,
                           global_batch_size=data_config.eval_batch_size, **common)
  info = DatasetInfo(name=data_config.name, num_classes=splits.num_classes,
                     image_shape=image_shape, num_train=len(train_records),
                     num_eval=len(eval_records))
  return train, evaluation, info


__all__ = ["Batch", "DatasetInfo", "EvalBatches", "TrainBatches", "create_datasets", "mixing",
           "pipeline", "prefetch_to_device", "sources", "transforms"]
