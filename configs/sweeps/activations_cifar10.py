"""Activations at full scale: sigmoid, tanh, ReLU and GELU in plain and residual CIFAR nets of 20
and 56 layers on CIFAR-10 (configs/resnet_cifar10.py, 64k iterations each).

  python -m cnn_jax.sweep --config configs/sweeps/activations_cifar10.py --print_commands

Sixteen points meant for a cluster with accelerators: print the commands, run them as
independent jobs, collect with --collect_only, then
`python experiments/activations/report.py --sweep_config configs/sweeps/activations_cifar10.py`.
AlexNet (Krizhevsky et al. 2012, Fig. 1): a 4-layer ReLU net (no BatchNorm) reaches 25 %
training error on CIFAR-10 six times faster than the same net with tanh.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "activations: sigmoid/tanh/relu/gelu x plain/residual x 20/56 layers, CIFAR-10"
  config.base_config = "configs/resnet_cifar10.py"
  config.base_config_arg = ""
  config.workdir = "runs/sweeps/activations_cifar10"
  # Train accuracy every 20 steps (~1/20 epoch): enough to find the epoch of a target error.
  config.overrides = [("log_every_steps", 20)]
  config.points = []
  # The grid of configs/sweeps/activations_digits.py.
  config.grid = [("model.name", ("plain20", "resnet20", "plain56", "resnet56")),
                 ("model.activation", ("sigmoid", "tanh", "relu", "gelu"))]
  config.plot_metrics = ("train/error", "eval/error")
  config.summarize = False
  return config
