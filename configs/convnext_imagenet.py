"""ConvNeXt V1 on ImageNet-1k, the 300-epoch recipe of Liu et al. 2022 (REFERENCE.md).

  python -m cnn_jax.main --config configs/convnext_imagenet.py:tiny --workdir runs/cnx_t
  python -m cnn_jax.main --config configs/convnext_imagenet.py:tiny,smoke ...   # CPU seconds

The arg names the size: tiny, small, base, large (drop path 0.1 / 0.4 / 0.5 / 0.5).
AdamW lr 4e-3 at batch 4096 (scaled linearly with the batch), betas (0.9, 0.999), weight decay
0.05 (not on biases, norms, LayerScale), 300 epochs, 20 warm-up, cosine, RandAugment
rand-m9-mstd0.5-inc1, mixup 0.8, cutmix 1.0, random erasing 0.25, label smoothing 0.1,
LayerScale 1e-6, EMA 0.9999 evaluated alongside. Top-1 (paper): 82.1 / 83.1 / 83.8 / 84.3.
"""

import ml_collections

from cnn_jax import config as base

DROP_PATH = {"tiny": 0.1, "small": 0.4, "base": 0.5, "large": 0.5}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = [a for a in (arg or "tiny").split(",") if a]
  sizes = [a for a in args if a in DROP_PATH]
  unknown = [a for a in args if a not in DROP_PATH and a != "smoke"]
  if unknown or len(sizes) != 1:
    raise ValueError(f"config arg {arg!r}: name one size of {', '.join(DROP_PATH)} "
                     "(and optionally ',smoke')")
  size = sizes[0]
  config = base.get_config()
  config.model = ml_collections.ConfigDict({
      "name": f"convnext_{size}", "num_classes": 1000, "drop_path_rate": DROP_PATH[size],
      "layer_scale_init": 1e-6, "head_init_scale": 1.0,
      "remat": False})
  base.set_imagenet_data(config, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25,
                         mixup_alpha=0.8, cutmix_alpha=1.0, interpolation="bicubic",
                         batch_size=4096)
  config.label_smoothing = 0.1
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 4e-3 * 256 / 4096  # = 4e-3 at the recipe's batch 4096
  config.optimizer.scale_lr_by_batch_over = 256
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 20
  config.schedule.end_lr_fraction = 1e-6 / 4e-3
  config.num_epochs = 300
  config.ema_decay = 0.9999
  config.log_every_steps = 100
  config.eval_every_steps = 3000
  config.checkpoint.every_steps = 1000
  return base.shrink_to_smoke(config) if "smoke" in args else config
