"""He et al. 2016 Fig. 6 on the embedded MNIST subset at 32x32 (4,000 train / 1,000 test).

  python -m cnn_jax.sweep --config configs/sweeps/degradation_mnist.py

configs/resnet_cifar_digits.py as it is (CIFAR nets at the paper's 32x32 resolution, one
channel), 3 epochs: the larger of the two CPU-scale degradation runs in experiments/degradation.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "degradation: plain vs residual, 20 vs 56 layers, MNIST subset 32x32"
  config.base_config = "configs/resnet_cifar_digits.py"
  config.base_config_arg = ""
  config.workdir = "runs/sweeps/degradation_mnist"
  config.overrides = [("num_epochs", 3), ("log_every_steps", 5), ("eval_every_steps", 31),
                      ("checkpoint.every_steps", 31)]
  config.points = []
  config.grid = [("model.name", ("plain20", "plain56", "resnet20", "resnet56"))]
  config.plot_metrics = ("train/loss", "train/error", "eval/error")
  config.summarize = True
  return config
