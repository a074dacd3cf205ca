"""AlexNet's Fig. 1 setting at CPU scale: sigmoid, tanh, ReLU and GELU in a small net *without*
BatchNorm (LeNet-5) on the 8x8 digits at 32x32, SGD, each activation at three learning rates.

  python -m cnn_jax.sweep --config configs/sweeps/activations_lenet_digits.py
  python experiments/activations/report.py --sweep_config configs/sweeps/activations_lenet_digits.py --out_dir experiments/activations/lenet

Krizhevsky et al. (2012) compare a four-layer CNN with ReLU and with tanh, no normalisation,
"the learning rates for each network were chosen independently to make training as fast as
possible": hence the learning-rate grid, of which the report's table shows every point. The
BatchNorm-ed CIFAR nets of configs/sweeps/activations_digits.py are the other half of the
experiment. 20 epochs of batch 64 (460 steps), training accuracy logged every step.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "activations without BatchNorm: LeNet-5, SGD, 8x8 digits at 32x32"
  config.base_config = "configs/lenet5_digits.py"
  config.base_config_arg = ""
  config.workdir = "runs/sweeps/activations_lenet_digits"
  config.overrides = [("optimizer.name", "sgd"), ("optimizer.momentum", 0.9),
                      ("optimizer.nesterov", False), ("optimizer.weight_decay", 5e-4),
                      ("schedule.warmup_epochs", 0.0), ("num_epochs", 20),
                      ("log_every_steps", 1), ("eval_every_steps", 23),
                      ("checkpoint.every_steps", 230)]
  config.points = []
  config.grid = [("optimizer.learning_rate", (0.01, 0.03, 0.1)),
                 ("model.activation", ("sigmoid", "tanh", "relu", "gelu"))]
  config.plot_metrics = ("train/loss", "train/error", "eval/error")
  config.summarize = False
  return config
