"""ConvNeXt V2 ablations at full scale, step 2: fine-tune each encoder of
configs/sweeps/fcmae_ablations_imagenet_pretrain.py (run that first) with the ConvNeXt V2-Base
fine-tuning recipe (configs/convnextv2_imagenet_finetune.py:base), next to the same network
trained from scratch with that recipe (the paper's "FCMAE vs supervised" comparison).

  python -m cnn_jax.sweep --config configs/sweeps/fcmae_ablations_imagenet_finetune.py \
      --print_commands
"""

import os

import ml_collections

from cnn_jax.cli import load_module
from cnn_jax.sweep import point_name


pretrain = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "fcmae_ablations_imagenet_pretrain.py"))


def _fine_tune(overrides: dict) -> dict:
  encoder = os.path.join(pretrain.WORKDIR, point_name(dict(overrides)), "encoder")
  return {"init_from": encoder, "init_from_required": True, "model.grn": overrides["model.grn"]}


# Scratch = the supervised baseline with the same recipe (init_from_required off on purpose).
POINTS = [{"init_from": "", "init_from_required": False, "model.grn": True}] + [
    _fine_tune(overrides) for _, overrides in pretrain.POINTS]


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "FCMAE ablations fine-tuned: ConvNeXt V2-Base, ImageNet-1K"
  config.base_config = "configs/convnextv2_imagenet_finetune.py"
  config.base_config_arg = "base"
  config.workdir = "runs/sweeps/fcmae_ablations_imagenet_finetune"
  config.overrides = []
  config.points = POINTS
  config.grid = []
  config.plot_metrics = ("train/loss", "eval/accuracy")
  config.summarize = False
  return config
