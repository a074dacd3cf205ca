"""Fine-tunes the ConvNeXt V2-Atto encoder of configs/fcmae_convnextv2_digits.py on the 8x8
digits upscaled to 32x32: the smoke run of the FCMAE -> fine-tuning path, with the fine-tuning
recipe's pieces (fresh head at init scale 0.001, layer decay, drop path, EMA, label smoothing).

    python -m cnn_jax.main --config configs/fcmae_convnextv2_digits.py --workdir runs/fcmae_digits
    python -m cnn_jax.main --config configs/convnextv2_digits_finetune.py \\
        --workdir runs/fcmae_digits_ft --config.init_from=runs/fcmae_digits/encoder

An empty init_from is an error (init_from_required); `--config.init_from= \\
--config.init_from_required=False` trains the same recipe from scratch, as a baseline.
"""

import ml_collections

from cnn_jax import config as base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base.get_config()
  config.task = "classification"
  config.init_from = "runs/fcmae_digits/encoder"
  config.init_from_required = True  # empty init_from: error (False: a from-scratch baseline)
  config.init_head = "drop"
  config.model = ml_collections.ConfigDict({
      "name": "convnextv2_atto", "num_classes": 10, "in_channels": 1, "patch_size": 1,
      "grn": True, "drop_path_rate": 0.1, "head_init_scale": 0.001})
  config.data.name = "digits"
  config.data.image_size = 32
  config.data.num_test = 300
  config.data.batch_size = 64
  config.data.eval_batch_size = 128
  config.data.max_shift = 2
  config.label_smoothing = 0.1
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.scale_lr_by_batch_over = 0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.optimizer.layer_decay = 0.9
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 1
  config.ema_decay = 0.99
  config.num_epochs = 10
  config.log_every_steps = 23
  config.eval_every_steps = 115
  config.checkpoint.every_steps = 230
  return config
