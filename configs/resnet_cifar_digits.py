"""CIFAR-style ResNet or plain net (He et al. 2016, section 4.2) on the embedded MNIST subset.

The config arg names the model: `--config configs/resnet_cifar_digits.py:plain56` (default
resnet20; any of resnet20/32/44/56/110, plain20/32/44/56/110). 4,000 train / 1,000 test real
handwritten digits padded to 32x32, one grayscale channel. The paper's CIFAR recipe (SGD momentum
0.9, lr 0.1, weight decay 1e-4, batch 128) on a short cosine schedule: small enough to compare
depths on a CPU, which is what experiments/degradation does.
"""

import ml_collections

from cnn_jax import config as base


def get_config(model_name: str | None = None) -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model = ml_collections.ConfigDict(
      {"name": model_name or "resnet20", "num_classes": 10, "in_channels": 1,
       "activation": "relu"})  # a field so that sweeps can override it (tanh, sigmoid, gelu)
  config.data.source = "embedded"
  config.data.name = "mnist_subset"
  config.data.image_size = 32
  config.data.num_test = 1000
  config.data.batch_size = 128
  config.data.eval_batch_size = 250
  config.data.max_shift = 2
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4
  config.optimizer.weight_decay_on = "kernels"
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 0.5
  config.num_epochs = 4
  config.log_every_steps = 10
  config.eval_every_steps = 31
  config.checkpoint.every_steps = 31
  config.checkpoint.keep = 2
  return config
