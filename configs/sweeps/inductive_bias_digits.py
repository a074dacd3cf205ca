"""Inductive bias at CPU scale: a CNN and a ViT of the same size on 10-100 % of the digits.

  python -m cnn_jax.sweep --config configs/sweeps/inductive_bias_digits.py
  python -m cnn_jax.sweep --config configs/sweeps/inductive_bias_digits.py:1200   # 3x the steps

Eight points of configs/inductive_bias.py: ResNet-20 (269,434 params) and a ViT narrowed to
the same size (vit60x6, 269,590) x data.train_fraction 0.1 / 0.25 / 0.5 / 1.0 of the MNIST
subset's 4,000 training digits (nested, class-stratified subsets; the 1,000 test digits are the
same for every point). Every point takes the SAME number of optimisation steps (400 of batch
64: 64 epochs of the 10 % subset, 6.4 of the full set) and the same 40 warmup steps, so a
smaller training set means more passes over fewer images at an equal compute budget. The
argument, if given, is the number of steps (warm-up: a tenth of them; workdir suffix _STEPS).
experiments/inductive_bias/ holds the results.
"""

import ml_collections

TRAIN_IMAGES = 4000   # the MNIST subset's train split (500 per class minus 100 test)
BATCH = 64
STEPS = 400  # default; the config argument overrides it
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def warmup_epochs(steps: int, num_train: int, batch: int) -> float:
  """schedule.warmup_epochs that is `steps` steps for a train split of `num_train` images
  (the schedule rounds warmup_epochs x steps_per_epoch, steps_per_epoch = num_train // batch)."""
  per_epoch = num_train // batch
  epochs = steps / per_epoch
  assert int(round(epochs * per_epoch)) == steps
  return epochs


def get_config(steps: str | None = None) -> ml_collections.ConfigDict:
  total = int(steps) if steps else STEPS
  warmup = total // 10
  config = ml_collections.ConfigDict()
  config.name = (f"inductive bias: ResNet-20 vs ViT (269k params) vs training-set size, digits, "
                 f"{total} steps")
  config.base_config = "configs/inductive_bias.py"
  config.base_config_arg = "resnet20"
  config.workdir = "runs/sweeps/inductive_bias_digits" + (f"_{total}" if steps else "")
  config.overrides = [("data.batch_size", BATCH), ("total_steps", total),
                      ("log_every_steps", 10), ("eval_every_steps", min(200, total // 4)),
                      ("checkpoint.every_steps", total // 2)]
  config.points = [
      {"data.train_fraction": f,
       "schedule.warmup_epochs": warmup_epochs(warmup, round(f * TRAIN_IMAGES), BATCH)}
      for f in FRACTIONS]
  config.grid = [("base_config_arg", ("resnet20", "vit60x6"))]
  config.plot_metrics = ("train/loss", "eval/error")
  config.summarize = True
  return config
