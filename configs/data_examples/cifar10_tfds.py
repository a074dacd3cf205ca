"""ResNet-20 on CIFAR-10 read from TFDS (array_record): the data section of the He et al. recipe.

Prepare the data once (needs network and TensorFlow for the build step only):
  tfds build cifar10 --data_dir=$HOME/tensorflow_datasets --file_format=array_record
then: python -m cnn_jax.main --config configs/data_examples/cifar10_tfds.py --workdir runs/c10
      --config.data.data_dir=$HOME/tensorflow_datasets
45k/5k train/val split with TFDS split syntax; pad-4 random crop + flip; no resize at eval.
Optimizer and schedule are the base config's: see configs/resnet_cifar10.py for the paper's.
"""

import ml_collections

from cnn_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model = ml_collections.ConfigDict({"name": "resnet20", "num_classes": 10})
  base.set_cifar10_data(config)
  return config
