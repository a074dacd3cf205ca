"""The ConvNeXt roadmap (ResNet-50 -> ConvNeXt-T, Liu et al. 2022 Fig. 2), one step per run.

    python -m cnn_jax.main --config configs/convnext_roadmap_digits.py:11 --workdir runs/rm11
    python -m cnn_jax.main --config configs/convnext_roadmap_digits.py:11,imagenet ...  # full scale

The config argument is "STEP[,imagenet]", STEP the roadmap step 0..11 (default 11). Every other
setting is the same for all steps, as the paper kept its training recipe fixed along the roadmap.

Small scale (default): `convnext_roadmap(step, width=WIDTH)`, every step narrowed in the same
proportion (stage and stem widths x WIDTH; depths, kernels and strides unchanged), 10 classes,
1 channel, on the embedded MNIST subset (4,000 train / 1,000 test real digits, +-2 px shifts).
The paper's stem stride 4 (total stride 32) is kept for every step, so at IMAGE_SIZE = 32 px the
stages see 8 / 4 / 2 / 1 px maps (56 / 28 / 14 / 7 at 224): a 7x7 kernel is wider than every
map but the first. --config.data.image_size=64 (digits padded) gives 16 / 8 / 4 / 2 at about 4x
the time per step. Recipe: AdamW, linear warm-up then cosine to 0, weight decay on kernels,
gradient clipping, STEPS steps of batch BATCH.
configs/sweeps/convnext_roadmap_digits.py runs all 12 steps x 2 seeds; results in
experiments/convnext_roadmap/.

",imagenet": the full-width step on ImageNet-1k (TFDS) with the ConvNeXt-T recipe of
configs/convnext_imagenet.py:tiny (300 epochs, AdamW 4e-3 @ 4096, RandAugment, mixup/cutmix,
erasing, label smoothing, stochastic depth 0.1, EMA), the paper's setting for its Fig. 2.
"""

import importlib.util
import os

import ml_collections

from cnn_jax import config as base

WIDTH = 0.125
IMAGE_SIZE = 32
STEPS = 250
WARMUP_STEPS = 25
BATCH = 64
TRAIN_IMAGES = 4000  # the MNIST subset's train split


def _imagenet_tiny() -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convnext_imagenet.py")
  spec = importlib.util.spec_from_file_location("convnext_roadmap_imagenet", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  step_arg, _, scale = (arg or "11").partition(",")
  step = int(step_arg) if step_arg else 11
  if scale not in ("", "imagenet"):
    raise ValueError(f"config arg {arg!r}: expected STEP or STEP,imagenet")
  if scale == "imagenet":
    config = _imagenet_tiny()
    config.model.name = "convnext_roadmap"
    config.model.step = step
    return config

  config = base.get_config()
  config.model = ml_collections.ConfigDict({
      "name": "convnext_roadmap", "step": step, "width": WIDTH, "num_classes": 10,
      "in_channels": 1})
  config.data.source = "embedded"
  config.data.name = "mnist_subset"
  config.data.num_test = 1000
  config.data.split_seed = 0
  config.data.image_size = IMAGE_SIZE
  config.data.max_shift = 2
  config.data.batch_size = BATCH
  config.data.eval_batch_size = 250
  config.total_steps = STEPS
  config.schedule.name = "warmup_cosine"
  # the schedule counts warm-up in epochs of TRAIN_IMAGES // BATCH steps
  config.schedule.warmup_epochs = WARMUP_STEPS / (TRAIN_IMAGES // BATCH)
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.optimizer.grad_clip_norm = 1.0
  config.log_every_steps = 10
  config.eval_every_steps = STEPS
  config.checkpoint.every_steps = STEPS
  config.checkpoint.keep = 1
  return config
