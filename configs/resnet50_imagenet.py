"""ResNet-50 on ImageNet-1k (He et al. 2016; torchvision's classic reference recipe).

  python -m cnn_jax.main --config configs/resnet50_imagenet.py --workdir runs/r50
  python -m cnn_jax.main --config configs/resnet50_imagenet.py:step ...   # lr /10 at 30, 60, 80
  python -m cnn_jax.main --config configs/resnet50_imagenet.py:smoke ...  # seconds on a CPU

SGD momentum 0.9, lr 0.1 x batch / 256 (batch 1024: 0.4), weight decay 1e-4 on every parameter,
90 epochs, 5 warm-up epochs then cosine (or the paper's step decay), RandomResizedCrop + flip,
eval resize 256 / crop 224 bilinear. Target (paper, 10-crop): 22.85 % top-1 error; torchvision's
single-crop reference: 76.13 % top-1.
"""

import ml_collections

from cnn_jax import config as base

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = set((arg or "").split(","))
  config = base.get_config()
  config.model = ml_collections.ConfigDict({"name": "resnet50", "num_classes": 1000,
                                            "zero_init_last_bn": True, "remat": False})
  base.set_imagenet_data(config, randaugment="", random_erasing=0.0, mixup_alpha=0.0,
                         cutmix_alpha=0.0, interpolation="bilinear", batch_size=1024)
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.scale_lr_by_batch_over = 256
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4
  config.optimizer.weight_decay_on = "all"
  config.num_epochs = 90
  if "step" in args:
    steps_per_epoch = IMAGENET_TRAIN_IMAGES // config.data.batch_size
    config.schedule.name = "step"
    config.schedule.warmup_epochs = 0.0
    config.schedule.decay_steps = tuple(e * steps_per_epoch for e in (30, 60, 80))
    config.schedule.decay_factor = 0.1
  else:
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 5
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint.every_steps = 2500
  return base.shrink_to_smoke(config) if "smoke" in args else config
