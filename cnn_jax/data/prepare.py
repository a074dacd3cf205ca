"""Index a data set once, ahead of training: python -m cnn_jax.data.prepare --config CONFIG

  python -m cnn_jax.data.prepare --config configs/data_examples/imagenet_tfds_convnext.py \
      --config.data.data_dir=/data/tensorflow_datasets

For `data.source = "tfds"` in the tfrecord format and for `"webdataset"`, training reads each
shard through an index of record offsets built on first use. This command builds the indexes of
the train and eval splits with a progress bar and ETA (into `data.index_dir`, default
~/.cache/cnn_jax/...; nothing is written into data_dir), checks every record frame and label on
the way, and prints the record counts. An interrupted run leaves no partial index (each is
written under a temporary name and renamed); rerunning reuses the shards already indexed.
Run it once per host before a multi-process job so the processes do not all scan at once.
"""

from __future__ import annotations

from absl import flags

from cnn_jax import cli
from cnn_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag()


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  config = cli.config_value("config", "configs/data_examples/imagenet_tfds_convnext.py")
  from cnn_jax.data import sources

  if config.data.source not in ("tfds", "webdataset"):
    raise UserError(f"data.source={config.data.source!r} needs no preparation (tfds in the "
                    "tfrecord format and webdataset do)")
  splits = sources.create_source(config)
  print(f"{config.data.source} {config.data.name}: {len(splits.train)} train records "
        f"({config.data.train_split}), {len(splits.eval)} eval records "
        f"({config.data.eval_split}), {splits.num_classes} classes; indexes ready", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags, process_settings=False)
