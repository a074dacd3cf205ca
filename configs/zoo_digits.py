"""Any model of the zoo on the embedded MNIST subset: a smoke run of every family.

The config arg names the model: `--config configs/zoo_digits.py:convnextv2_atto` (default
resnet20). Each family gets the small-image option that fits 28-32 px digits (1 channel):
ImageNet ResNets the 3x3 stem without max-pool, ConvNeXt a 2x2 patchify stem, ViT the
patch-4 32 px variants; AlexNet needs >= 63 px, so its digits are padded to 64.
"""

import ml_collections

from cnn_jax import config as base


def model_options(name: str) -> tuple[dict, int]:
  """(constructor options, image size) that make `name` fit the 1-channel digits."""
  if name.startswith("lenet"):
    return {"image_size": 32}, 32
  if name.startswith("alexnet"):
    return {}, 64
  if name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34"):
    return {"small_stem": True}, 32
  if name.startswith(("convnext", "hybrid")):
    return {"patch_size": 2}, 32
  if name.startswith("vit") and not name.endswith("_32"):
    raise ValueError(f"{name} is a 224 px model; use vit_tiny_patch4_32 or vit_small_patch4_32")
  return ({"image_size": 32} if name.startswith("vit") else {}), 32


def get_config(model_name: str | None = None) -> ml_collections.ConfigDict:
  name = model_name or "resnet20"
  options, image_size = model_options(name)
  config = base.get_config()
  config.model = ml_collections.ConfigDict(
      {"name": name, "num_classes": 10, "in_channels": 1, **options})
  config.data.source = "embedded"
  config.data.name = "mnist_subset"
  config.data.image_size = image_size
  config.data.num_test = 1000
  config.data.batch_size = 128
  config.data.eval_batch_size = 200
  config.data.max_shift = 2
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.optimizer.grad_clip_norm = 1.0
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 1
  config.num_epochs = 10
  config.log_every_steps = 10
  config.eval_every_steps = 155
  config.checkpoint.every_steps = 155
  config.checkpoint.keep = 2
  return config
