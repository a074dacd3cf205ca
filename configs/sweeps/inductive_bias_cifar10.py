"""Inductive bias at full scale: ResNet-20 vs a ViT of the same size on 10-100 % of CIFAR-10.

  python -m cnn_jax.sweep --config configs/sweeps/inductive_bias_cifar10.py --print_commands

The twin of inductive_bias_digits.py for users with accelerators: the same two models
(configs/inductive_bias.py, 3 channels: ResNet-20 269,722 params, vit60x6 271,510) x the first
10 / 25 / 50 / 100 % of CIFAR-10's train split in TFDS order (data.train_split "train[:10%]"
etc.: not stratified; TFDS's CIFAR-10 train order is already mixed), evaluated on the 10,000
test images. Every point takes the same 40,000 steps of batch 128 (~100 epochs of the full
set, ~1,000 of the 10 % subset) with the same 2,000 warmup steps. Prepare the data first
(`tfds build cifar10 --file_format=array_record`, see docs/data.md); print the
commands, run them as independent jobs, then collect with --collect_only.
"""

import ml_collections

TRAIN_IMAGES = 50000
BATCH = 128
STEPS = 40000
WARMUP_STEPS = 2000
PERCENTS = (10, 25, 50, 100)


def warmup_epochs(steps: int, num_train: int, batch: int) -> float:
  """schedule.warmup_epochs that is `steps` steps for a train split of `num_train` images."""
  per_epoch = num_train // batch
  epochs = steps / per_epoch
  assert int(round(epochs * per_epoch)) == steps
  return epochs


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "inductive bias: ResNet-20 vs ViT (270k params) vs training-set size, CIFAR-10"
  config.base_config = "configs/inductive_bias.py"
  config.base_config_arg = "resnet20,cifar10"
  config.workdir = "runs/sweeps/inductive_bias_cifar10"
  config.overrides = [("data.batch_size", BATCH), ("total_steps", STEPS)]
  config.points = [
      {"data.train_split": f"train[:{p}%]" if p < 100 else "train",
       "schedule.warmup_epochs": warmup_epochs(WARMUP_STEPS, TRAIN_IMAGES * p // 100, BATCH)}
      for p in PERCENTS]
  config.grid = [("base_config_arg", ("resnet20,cifar10", "vit60x6,cifar10"))]
  config.plot_metrics = ("train/loss", "eval/error")
  config.summarize = True
  return config
