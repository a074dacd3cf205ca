"""Inductive bias at CPU scale: a CNN and a ViT of the same size on 10-100 % of the digits.

  python -m cnn_jax.sweep --config configs/sweeps/inductive_bias_digits.py

Eight points of configs/inductive_bias.py: ResNet-20 (269,434 params) and a ViT narrowed to
the same size (vit60x6, 269,590) x data.train_fraction 0.1 / 0.25 / 0.5 / 1.0 of the MNIST
subset's 4,000 training digits (nested, class-stratified subsets; the 1,000 test digits are the
same for every point). Every point takes the SAME number of optimisation steps (400 of batch
64: 64 epochs of the 10 % subset, 6.4 of the full set) and the same 40 warmup steps, so a
smaller training set means more passes over fewer images at an equal compute budget.
experiments/inductive_bias/ holds the results.
"""

import ml_collections

TRAIN_IMAGES = 4000   # the MNIST subset's train split (500 per class minus 100 test)
BATCH = 64
STEPS = 400
WARMUP_STEPS = 40
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def warmup_epochs(steps: int, num_train: int, batch: int) -> float:
  """schedule.warmup_epochs that is `steps` steps for a train split of `num_train` images
  (the schedule rounds warmup_epochs x steps_per_epoch, steps_per_epoch = num_train // batch)."""
  per_epoch = num_train // batch
  epochs = steps / per_epoch
  assert int(round(epochs * per_epoch)) == steps
  return epochs


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "inductive bias: ResNet-20 vs ViT (269k params) vs training-set size, digits"
  config.base_config = "configs/inductive_bias.py"
  config.base_config_arg = "resnet20"
  config.workdir = "runs/sweeps/inductive_bias_digits"
  config.overrides = [("data.batch_size", BATCH), ("total_steps", STEPS),
                      ("log_every_steps", 10), ("eval_every_steps", 100),
                      ("checkpoint.every_steps", 200)]
  config.points = [
      {"data.train_fraction": f,
       "schedule.warmup_epochs": warmup_epochs(WARMUP_STEPS, round(f * TRAIN_IMAGES), BATCH)}
      for f in FRACTIONS]
  config.grid = [("base_config_arg", ("resnet20", "vit60x6"))]
  config.plot_metrics = ("train/loss", "eval/error")
  config.summarize = True
  return config
