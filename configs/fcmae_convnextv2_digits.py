"""FCMAE pre-training of ConvNeXt V2-Atto on scikit-learn's 8x8 digits upscaled to 32x32: the
CPU smoke run of the FCMAE recipe (real data, no download; 0.18 GMACs forward, about 1 GFLOP
per image per training step, so 20 epochs of the 1,497 training images are ~30 TFLOPs: tens of
minutes on a 2-core CPU, far less on an accelerator).
tests/test_fcmae.py runs a narrower copy (dims 16-32, one block per stage).

The stem is 1x1 (patch_size=1), so the stages run at 32/16/8/4 px and the mask is a 4x4 grid of
8x8 patches, 60% of them (10 of 16) hidden per image. The encoder is exported to
WORKDIR/encoder at the end; configs/convnextv2_digits_finetune.py fine-tunes it.
"""

import ml_collections

from cnn_jax import config as base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base.get_config()
  config.task = "fcmae"
  config.model = ml_collections.ConfigDict({
      "name": "convnextv2_atto", "num_classes": 10, "in_channels": 1, "patch_size": 1,
      "grn": True, "drop_path_rate": 0.0})
  config.fcmae = ml_collections.ConfigDict({
      "mask_ratio": 0.6,
      "patch_size": 8,          # = the encoder's total stride: 1 (stem) x 2^3
      "decoder_dim": 128,
      "decoder_depth": 1,
      "norm_pix_loss": True,
      "sparse": True,
      "reconstruction_every_steps": 100,
      "num_reconstructions": 8,
  })
  config.data.name = "digits"
  config.data.image_size = 32
  config.data.num_test = 300
  config.data.batch_size = 64
  config.data.eval_batch_size = 128
  config.data.max_shift = 2
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1.5e-4 * 16  # the recipe's base lr, 16x for a tiny run
  config.optimizer.scale_lr_by_batch_over = 256
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 2
  config.num_epochs = 20
  config.log_every_steps = 23
  config.eval_every_steps = 115
  config.checkpoint.every_steps = 230
  config.checkpoint.best_metric = "loss"  # reconstruction loss on the eval split
  config.checkpoint.best_mode = "min"
  return config
