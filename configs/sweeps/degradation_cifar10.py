"""He et al. 2016 Fig. 6 at full scale: plain and residual nets of 20-110 layers on CIFAR-10.

  python -m cnn_jax.sweep --config configs/sweeps/degradation_cifar10.py --print_commands

Ten points of configs/resnet_cifar10.py (64k iterations each); meant for a cluster with
accelerators: print the commands, run them as independent jobs, then collect with
--collect_only. Paper test errors (ResNet): 8.75 / 7.51 / 7.17 / 6.97 / 6.43 %; the plain nets
get worse with depth.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "degradation: plain vs residual CIFAR nets on CIFAR-10 (He et al. Fig. 6)"
  config.base_config = "configs/resnet_cifar10.py"
  config.base_config_arg = ""
  config.workdir = "runs/sweeps/degradation_cifar10"
  config.overrides = []
  config.points = []
  config.grid = [("model.name", ("plain20", "plain32", "plain44", "plain56", "plain110",
                                 "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"))]
  config.plot_metrics = ("train/error", "eval/error")
  config.summarize = True
  return config
