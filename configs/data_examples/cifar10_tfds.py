"""ResNet-20 on CIFAR-10 read from TFDS (array_record): the data section of the He et al. recipe.

Prepare the data once (needs network and TensorFlow for the build step only):
  tfds build cifar10 --data_dir=$HOME/tensorflow_datasets --file_format=array_record
then: python -m cnn_jax.main --config configs/data_examples/cifar10_tfds.py --workdir runs/c10
      --config.data.data_dir=$HOME/tensorflow_datasets
45k/5k train/val split with TFDS split syntax; pad-4 random crop + flip; no resize at eval.
Optimizer and schedule are the base config's: see configs/resnet20_cifar10.py for the paper's.
"""

import os

import ml_collections

from cnn_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model = ml_collections.ConfigDict({"name": "resnet20", "num_classes": 10})
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
  config.data.train_split = "train[:90%]"
  config.data.eval_split = "train[90%:]"
  config.data.image_size = 32
  config.data.channels = 3
  config.data.mean = (0.4914, 0.4822, 0.4465)
  config.data.std = (0.2470, 0.2435, 0.2616)
  config.data.augment = "cifar"
  config.data.cifar_pad = 4
  config.data.hflip_prob = 0.5
  config.data.crop_pct = 1.0
  config.data.batch_size = 128
  config.data.eval_batch_size = 500
  config.data.num_workers = 0
  config.data.num_threads = 4
  return config
