"""He et al. 2016 Fig. 6 at CPU scale: plain vs residual CIFAR nets at two depths on digits.

  python -m cnn_jax.sweep --config configs/sweeps/degradation_digits.py

Four points (plain20, plain56, resnet20, resnet56), each trained by
configs/resnet_cifar_digits.py with the same recipe and seed, made small enough for a shared
2-core CPU: scikit-learn's 1,797 8x8 digits upscaled to 16x16 (1,497 train / 300 test) instead
of the MNIST subset at 32x32 (a quarter of the pixels, a third of the images), 12 epochs of
batch 64. experiments/degradation/ holds the results.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "degradation: plain vs residual, 20 vs 56 layers, 8x8 digits at 16x16"
  config.base_config = "configs/resnet_cifar_digits.py"
  config.base_config_arg = ""
  config.workdir = "runs/sweeps/degradation_digits"
  config.overrides = [("data.name", "digits"), ("data.image_size", 16), ("data.num_test", 300),
                      ("data.max_shift", 1), ("data.batch_size", 64),
                      ("data.eval_batch_size", 300), ("num_epochs", 12),
                      ("log_every_steps", 6), ("eval_every_steps", 23),
                      ("checkpoint.every_steps", 46)]
  config.points = []
  config.grid = [("model.name", ("plain20", "plain56", "resnet20", "resnet56"))]
  config.plot_metrics = ("train/loss", "train/error", "eval/error")
  config.summarize = True
  return config
