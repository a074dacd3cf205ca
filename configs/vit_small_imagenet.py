"""ViT-S/16 on ImageNet-1k, DeiT-style (Touvron et al. 2021): the data-hungry contrast.

  python -m cnn_jax.main --config configs/vit_small_imagenet.py --workdir runs/vit_s
  python -m cnn_jax.main --config configs/vit_small_imagenet.py:smoke ...   # CPU seconds

AdamW lr 5e-4 x batch / 512, weight decay 0.05 (not on biases, norms, pos_embed, cls_token),
300 epochs, 5 warm-up, cosine to 1e-5, RandAugment rand-m9-mstd0.5-inc1, mixup 0.8, cutmix
1.0, random erasing 0.25, label smoothing 0.1, drop path 0.1, batch 1024. DeiT-S: 79.8 % top-1.
"""

import ml_collections

from cnn_jax import config as base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = set((arg or "").split(","))
  config = base.get_config()
  config.model = ml_collections.ConfigDict({
      "name": "vit_small_patch16_224", "num_classes": 1000, "image_size": 224,
      "drop_path_rate": 0.1, "remat": False})
  base.set_imagenet_data(config, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25,
                         mixup_alpha=0.8, cutmix_alpha=1.0, interpolation="bicubic",
                         batch_size=1024)
  config.label_smoothing = 0.1
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 5e-4
  config.optimizer.scale_lr_by_batch_over = 512
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 5
  config.schedule.end_lr_fraction = 1e-5 / 5e-4
  config.num_epochs = 300
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint.every_steps = 2500
  if "smoke" in args:
    config.model.image_size = 32  # 2x2 patches of 16 px: same weights shapes but pos_embed
  return base.shrink_to_smoke(config) if "smoke" in args else config
