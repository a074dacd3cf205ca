"""ConvNeXt V2 ablations (Woo et al. 2023, Tables 1-3) at full scale, step 1: FCMAE
pre-training of ConvNeXt V2-Base on ImageNet-1K, 800 epochs each, for users with accelerators.

  python -m cnn_jax.sweep --config configs/sweeps/fcmae_ablations_imagenet_pretrain.py \
      --print_commands        # one command per point, for a cluster scheduler
  python -m cnn_jax.sweep --config configs/sweeps/fcmae_ablations_imagenet_finetune.py

The same five points as the CPU-scale sweep (configs/sweeps/fcmae_ablations_pretrain.py): sparse
encoder + mask 0.6 + GRN, GRN off, dense masked encoder, mask 0.4 and 0.8, each exporting its
encoder to WORKDIR/POINT/encoder. Needs imagenet2012 prepared for TFDS (see
configs/fcmae_convnextv2_imagenet.py).
"""

import os

import ml_collections

from cnn_jax.cli import load_module


POINTS = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "fcmae_ablations_pretrain.py")).POINTS
WORKDIR = "runs/sweeps/fcmae_ablations_imagenet_pretrain"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "FCMAE pre-training ablations: ConvNeXt V2-Base, ImageNet-1K, 800 epochs"
  config.base_config = "configs/fcmae_convnextv2_imagenet.py"
  config.base_config_arg = "base,800"
  config.workdir = WORKDIR
  config.overrides = []
  # The ImageNet config has no `ablation` label field: the points are named by their overrides.
  config.points = [dict(overrides) for _, overrides in POINTS]
  config.grid = []
  config.plot_metrics = ("train/loss", "eval/loss")
  config.summarize = False
  return config
