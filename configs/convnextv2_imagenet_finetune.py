"""ImageNet-1K fine-tuning of an FCMAE-pre-trained ConvNeXt V2 (Woo et al. 2023):
`--config configs/convnextv2_imagenet_finetune.py:SIZE --config.init_from=DIR`, DIR the
`encoder` folder of an FCMAE workdir (configs/fcmae_convnextv2_imagenet.py) or an official FCMAE
checkpoint converted by `python -m cnn_jax.convert`; the classifier starts fresh
(init_head=drop) with head init scale 0.001. Without init_from the run stops with an error
(init_from_required); `--config.init_from_required=False` trains the same recipe from scratch.

Per size (effective batch 1024, lr = base lr x 1024 / 256, EMA 0.9999 evaluated alongside):
atto, tiny and base are the official TRAINING.md commands; femto/pico/nano follow atto and
large/huge follow base, with REFERENCE.md's layer decay, drop path and epochs (the official
repository publishes no command for them: an interpolation). The official base/large runs use
the 'group' layer-decay variant (12 layer groups); cnn_jax's layer decay is per block ('single').
"""

import ml_collections

from cnn_jax import config as base

#          base lr, epochs, warmup, layer decay, weight decay, drop path, mixup, cutmix, smoothing
RECIPES = {
    "atto":  (2e-4, 600, 0, 0.9, 0.3, 0.1, 0.0, 0.0, 0.2),
    "femto": (2e-4, 600, 0, 0.9, 0.3, 0.0, 0.0, 0.0, 0.2),
    "pico":  (2e-4, 600, 0, 0.9, 0.3, 0.0, 0.0, 0.0, 0.2),
    "nano":  (2e-4, 600, 0, 0.9, 0.3, 0.1, 0.0, 0.0, 0.2),
    "tiny":  (8e-4, 300, 40, 0.9, 0.05, 0.2, 0.8, 1.0, 0.1),
    "base":  (6.25e-4, 100, 20, 0.6, 0.05, 0.1, 0.8, 1.0, 0.1),
    "large": (6.25e-4, 100, 20, 0.6, 0.05, 0.2, 0.8, 1.0, 0.1),
    "huge":  (6.25e-4, 50, 10, 0.75, 0.05, 0.3, 0.8, 1.0, 0.1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size = arg or "base"
  if size not in RECIPES:
    raise ValueError(f"unknown ConvNeXt V2 size {size!r}; choose from {', '.join(RECIPES)}")
  (base_lr, epochs, warmup, layer_decay, weight_decay, drop_path, mixup, cutmix,
   smoothing) = RECIPES[size]
  config = base.get_config()
  config.task = "classification"
  config.init_from = ""        # an FCMAE encoder export or a converted checkpoint
  config.init_from_required = True  # empty init_from: error (False: a from-scratch baseline)
  config.init_head = "drop"
  config.model = ml_collections.ConfigDict({
      "name": f"convnextv2_{size}", "num_classes": 1000, "in_channels": 3, "patch_size": 4,
      "grn": True, "drop_path_rate": drop_path, "head_init_scale": 0.001, "remat": False})

  base.set_imagenet_data(config, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25,
                         mixup_alpha=mixup, cutmix_alpha=cutmix, interpolation="bicubic",
                         batch_size=1024)
  config.data.mixup.prob = 1.0
  config.data.mixup.switch_prob = 0.5
  config.label_smoothing = smoothing

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = base_lr
  config.optimizer.scale_lr_by_batch_over = 256
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = weight_decay
  config.optimizer.weight_decay_on = "kernels"
  config.optimizer.layer_decay = layer_decay
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = warmup
  config.schedule.init_lr_fraction = 0.0
  config.schedule.end_lr_fraction = 0.0
  config.ema_decay = 0.9999
  config.num_epochs = epochs
  config.log_every_steps = 100
  config.eval_every_steps = 2500
  config.checkpoint.every_steps = 2500
  return config
