"""ResNet-50 for the accelerator check: the ImageNet recipe on synthetic 224 px images through
the real input pipeline (grain, RandomResizedCrop + flip), bfloat16 compute, 300 steps.

  python -m cnn_jax.main --config experiments/accelerator/resnet50_synthetic.py --workdir W
  ...resnet50_synthetic.py:dry   # ResNet-20 at 32 px, 3 steps: checks the wiring on a CPU
"""

import os

import ml_collections

from cnn_jax import cli

_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs",
                       "resnet50_imagenet.py")


def _recipe() -> ml_collections.ConfigDict:
  return cli.load_module(_RECIPE).get_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dry = arg == "dry"
  config = _recipe()
  with config.unlocked():
    config.model.num_classes = 1000
    config.model.dtype = "float32" if dry else "bfloat16"
    if dry:
      config.model.name = "resnet20"
  config.data.source = "synthetic"
  config.data.name = "synthetic_224"
  config.data.image_size = 32 if dry else 224
  config.data.batch_size = 8 if dry else 256
  config.data.eval_batch_size = 8 if dry else 256
  config.data.synthetic = ml_collections.ConfigDict(
      {"num_train": 64 if dry else 256 * 320, "num_eval": 8 if dry else 256,
       "num_classes": 1000})
  # Decoding and augmentation in worker processes, one per host core but two (the loop and
  # the device's host thread keep those).
  config.data.num_workers = 0 if dry else max(1, (os.cpu_count() or 2) - 2)
  config.data.num_threads = 2 if dry else 4
  config.optimizer.scale_lr_by_batch_over = 256
  config.num_epochs = 0
  config.total_steps = 3 if dry else 300
  config.schedule.warmup_epochs = 0.0
  config.log_every_steps = 1 if dry else 50
  config.eval_every_steps = config.total_steps
  config.checkpoint.every_steps = config.total_steps
  config.checkpoint.best_metric = ""
  return config
