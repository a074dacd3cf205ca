"""LeNet-5 on scikit-learn's 1,797 8x8 digits, upscaled to 32x32: the fastest real-data run.

Used by the tests; also a seconds-long smoke run: 1,497 train / 300 test images.
"""

import ml_collections

from cnn_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model = ml_collections.ConfigDict(
      {"name": "lenet5", "num_classes": 10, "in_channels": 1, "image_size": 32,
       "activation": "relu"})  # a field so that sweeps can override it (tanh, sigmoid, gelu)
  config.data.name = "digits"
  config.data.image_size = 32
  config.data.num_test = 300
  config.data.batch_size = 64
  config.data.eval_batch_size = 128
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 1
  config.num_epochs = 5
  config.log_every_steps = 23
  config.eval_every_steps = 115
  config.checkpoint.every_steps = 50
  return config
