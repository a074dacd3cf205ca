"""CIFAR ResNets and plain nets on CIFAR-10 via TFDS: He et al. 2016 section 4.2, full scale.

  python -m cnn_jax.main --config configs/resnet_cifar10.py:plain56 --workdir runs/c10_plain56
  python -m cnn_jax.sweep --config configs/sweeps/degradation_cifar10.py --print_commands

The config arg names the model (resnet20/32/44/56/110, plain20/32/44/56/110; default resnet20);
`:resnet56,smoke` is the same recipe on synthetic data for a few CPU seconds.
The paper's recipe: 45k/5k train/val split, SGD momentum 0.9, weight decay 1e-4 on every
parameter (torch SGD), batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, 64k
iterations, pad 4 + random 32x32 crop + flip. Two departures: per-channel mean/std
normalisation instead of per-pixel mean subtraction, and no 400-iteration lr warm-up at 0.01
for ResNet-110 (add --config.schedule.warmup_epochs=1.1 --config.schedule.init_lr_fraction=0.1).
Needs the TFDS cifar10 build (see configs/data_examples/cifar10_tfds.py) and an accelerator:
not run on this project's CPU machine.
"""

import ml_collections

from cnn_jax import config as base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = [a for a in (arg or "").split(",") if a]
  model_names = [a for a in args if a != "smoke"]
  config = base.get_config()
  config.model = ml_collections.ConfigDict(
      {"name": model_names[0] if model_names else "resnet20", "num_classes": 10,
       "in_channels": 3, "activation": "relu"})
  base.set_cifar10_data(config)
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4
  config.optimizer.weight_decay_on = "all"
  config.schedule.name = "step"
  config.schedule.warmup_epochs = 0.0
  config.schedule.init_lr_fraction = 0.0
  config.schedule.decay_steps = (32000, 48000)
  config.schedule.decay_factor = 0.1
  config.num_epochs = 0
  config.total_steps = 64000
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint.every_steps = 2000
  config.checkpoint.keep = 2
  return base.shrink_to_smoke(config) if "smoke" in args else config
