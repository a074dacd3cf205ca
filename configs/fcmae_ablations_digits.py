"""ConvNeXt V2 ablations at CPU scale: a narrower ConvNeXt V2-Atto for FCMAE pre-training and
fine-tuning on the 8x8 digits at 32x32 (experiments/fcmae_ablations/).

  --config configs/fcmae_ablations_digits.py:pretrain   configs/fcmae_convnextv2_digits.py
  --config configs/fcmae_ablations_digits.py:finetune   configs/convnextv2_digits_finetune.py

Each is the named config with model.dims and model.depths made fields, so that a sweep can set
them (a sweep override must name an existing field), and set to a narrow atto, (16, 32, 64, 128)
x (1, 1, 2, 1): full atto (40-320 x 2-2-6-2) is too slow for a dozen runs on a shared CPU. The
finetune variant starts from scratch (init_from "", init_from_required False: the recipe's
from-scratch opt-out); the fine-tune sweep points it at each pre-training run's WORKDIR/encoder.
"""

import importlib.util
import os

import ml_collections

_FILES = {"pretrain": "fcmae_convnextv2_digits.py", "finetune": "convnextv2_digits_finetune.py"}
DIMS = (16, 32, 64)
DEPTHS = (1, 2, 1)


def _load(file_name: str) -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), file_name)
  spec = importlib.util.spec_from_file_location(f"fcmae_ablations_{file_name[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  which = arg or "pretrain"
  if which not in _FILES:
    raise ValueError(f"config arg must be one of {sorted(_FILES)}, got {which!r}")
  config = _load(_FILES[which])
  # A label the sweeps set per point (it names the point's workdir and table row); training
  # ignores it.
  config.ablation = ""
  config.model.dims = DIMS
  config.model.depths = DEPTHS
  # 16 px (each digit pixel 2x2) and three stages: stages at 16/8/4 px, total stride 4, so the
  # mask is still a 4x4 grid of patches (4x4 px = 2x2 digit pixels), at a quarter of the pixels.
  config.data.image_size = 16
  config.data.max_shift = 1
  config.eval_every_steps = 23
  config.checkpoint.every_steps = 1000
  if which == "pretrain":
    config.fcmae.patch_size = 4
    config.fcmae.reconstruction_every_steps = 1000  # and once at the end
    config.num_epochs = 12
    config.schedule.warmup_epochs = 1
    config.eval_every_steps = 46
  else:
    config.init_from = ""  # scratch unless a sweep point names an encoder
    config.init_from_required = False  # the from-scratch side of the comparison is intended
    # Labels are scarce: 10 % of the 1,497 training digits (150, 15 per class), the regime
    # where masked pre-training on all 1,497 unlabelled images should help most.
    config.data.train_fraction = 0.1
    config.data.batch_size = 32  # 4 steps an epoch on 149 images (batch 64 would make 2)
    config.num_epochs = 30
    config.schedule.warmup_epochs = 3
    config.ema_decay = 0.95  # the recipe's 0.99 averages over more steps than the run has
    config.log_every_steps = 10
    config.eval_every_steps = 10
  return config
