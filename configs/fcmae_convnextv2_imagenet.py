"""FCMAE pre-training of a ConvNeXt V2 on ImageNet-1K (Woo et al. 2023; the official
TRAINING.md recipe): `--config configs/fcmae_convnextv2_imagenet.py:SIZE[,EPOCHS]`, SIZE one of
atto femto pico nano tiny base large huge (default base), EPOCHS 800 (default) or 1600.

AdamW, base lr 1.5e-4 x batch / 256, betas (0.9, 0.95), weight decay 0.05, batch 4096, cosine
with 40 warmup epochs; RandomResizedCrop(224, scale 0.2-1, bicubic) + flip only. Mask: 60% of
the 7x7 grid of 32x32 patches; decoder: one ConvNeXt V2 block of width 512; norm_pix_loss.
Prepare imagenet2012 in array_record format under data_dir (see
configs/data_examples/imagenet_tfds_convnext.py). The encoder is exported to WORKDIR/encoder
for configs/convnextv2_imagenet_finetune.py.
"""

import ml_collections

from cnn_jax import config as base

SIZES = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")


def parse_size_and_epochs(arg: str | None, default_epochs: int) -> tuple[str, int]:
  size, _, epochs = (arg or "base").partition(",")
  if size not in SIZES:
    raise ValueError(f"unknown ConvNeXt V2 size {size!r}; choose from {', '.join(SIZES)}")
  return size, int(epochs) if epochs else default_epochs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, epochs = parse_size_and_epochs(arg, 800)
  config = base.get_config()
  config.task = "fcmae"
  config.model = ml_collections.ConfigDict({
      "name": f"convnextv2_{size}", "num_classes": 1000, "in_channels": 3, "patch_size": 4,
      "grn": True, "drop_path_rate": 0.0, "remat": False})
  config.fcmae = ml_collections.ConfigDict({
      "mask_ratio": 0.6, "patch_size": 32, "decoder_dim": 512, "decoder_depth": 1,
      "norm_pix_loss": True, "sparse": True, "reconstruction_every_steps": 5000,
      "num_reconstructions": 8})

  # FCMAE pre-training augments with RandomResizedCrop(0.2-1) + flip only.
  base.set_imagenet_data(config, randaugment="", random_erasing=0.0, mixup_alpha=0.0,
                         cutmix_alpha=0.0, interpolation="bicubic", batch_size=4096)
  config.data.crop_scale = (0.2, 1.0)
  config.data.normalise_on_device = False  # FCMAE's step takes float32 images.

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 1.5e-4
  config.optimizer.scale_lr_by_batch_over = 256
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.optimizer.layer_decay = 1.0
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 40
  config.schedule.init_lr_fraction = 0.0
  config.schedule.end_lr_fraction = 0.0
  config.label_smoothing = 0.0
  config.ema_decay = 0.0
  config.num_epochs = epochs
  config.log_every_steps = 100
  config.eval_every_steps = 3000
  config.checkpoint.every_steps = 3000
  config.checkpoint.best_metric = "loss"  # reconstruction loss on the eval split
  config.checkpoint.best_mode = "min"
  return config
