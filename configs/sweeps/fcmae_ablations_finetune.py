"""ConvNeXt V2 ablations at CPU scale, step 2: fine-tune each FCMAE encoder of
configs/sweeps/fcmae_ablations_pretrain.py (run that first) on 10 % of the labels (149 digits),
next to the same network trained from scratch with the same recipe.

  python -m cnn_jax.sweep --config configs/sweeps/fcmae_ablations_finetune.py

Points (configs/fcmae_ablations_digits.py:finetune, 30 epochs of batch 32, seed 0 unless said):
scratch and fcmae (sparse, mask 0.6, GRN) at fine-tuning seeds 0, 1, 2 (the pre-trained encoder
is the seed-0 one); no_grn (GRN off in pre-training and fine-tuning), dense, mask0.4, mask0.8;
scratch_long (scratch for 120 epochs, 480 steps, about the step count of pre-training plus
fine-tuning); with all 1,497 labels for 8 epochs of batch 64, scratch_full and fcmae_full; then
fcmae_long (FCMAE fine-tuned for 120 epochs), and at lr 5e-4 (instead of 2e-3) scratch and fcmae
at seeds 0, 1, 2 and the four other pre-trained encoders at seed 0 (labels ending _lr5e-4).
"""

import os

import ml_collections

from cnn_jax.cli import load_module
from cnn_jax.sweep import point_name


pretrain = load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "fcmae_ablations_pretrain.py"))
_PRETRAINED = {label: overrides for label, overrides in pretrain.POINTS}


def encoder_dir(label: str) -> str:
  """WORKDIR/encoder of the pre-training point `label` (the sweep's own point name)."""
  name = point_name({"ablation": label, **_PRETRAINED[label]})
  return os.path.join(pretrain.WORKDIR, name, "encoder")


def _fine_tune(label: str, seed: int = 0, **extra) -> dict:
  point = {"ablation": f"{label}_s{seed}" if seed else label, "init_from": encoder_dir(label),
           "model.grn": _PRETRAINED[label]["model.grn"], "seed": seed}
  point.update(extra)
  return point


def _scratch(label: str, seed: int = 0, **extra) -> dict:
  point = {"ablation": f"{label}_s{seed}" if seed else label, "init_from": "",
           "model.grn": True, "seed": seed}
  point.update(extra)
  return point


FULL = {"data.train_fraction": 1.0, "data.batch_size": 64, "num_epochs": 8,
        "schedule.warmup_epochs": 1, "eval_every_steps": 46}

POINTS = [
    _scratch("scratch"), _fine_tune("fcmae"),
    _fine_tune("no_grn"), _fine_tune("dense"), _fine_tune("mask0.4"), _fine_tune("mask0.8"),
    _scratch("scratch", 1), _fine_tune("fcmae", 1), _scratch("scratch", 2), _fine_tune("fcmae", 2),
    _scratch("scratch_long", num_epochs=120, eval_every_steps=40),
    {**_scratch("scratch_full"), **FULL}, {**_fine_tune("fcmae", ablation="fcmae_full"), **FULL},
    # Added after the first 13 points had run (the sweep resumes, skipping finished points):
    # the FCMAE encoders sat at chance for the first ~60 fine-tuning steps at lr 2e-3, so
    # fine-tune longer (fcmae_long), and fine-tune both sides at lr 5e-4 instead of 2e-3.
    _fine_tune("fcmae", ablation="fcmae_long", num_epochs=120, eval_every_steps=40),
    _scratch("scratch_lr5e-4", **{"optimizer.learning_rate": 5e-4}),
    _fine_tune("fcmae", ablation="fcmae_lr5e-4", **{"optimizer.learning_rate": 5e-4}),
    # At lr 5e-4 the FCMAE encoder fine-tuned without the plateau: the ablations and two more
    # seeds of the key comparison at that lr.
    *[_fine_tune(label, ablation=f"{label}_lr5e-4", **{"optimizer.learning_rate": 5e-4})
      for label in ("no_grn", "dense", "mask0.4", "mask0.8")],
    *[make(label, seed, ablation=f"{label}_lr5e-4_s{seed}", **{"optimizer.learning_rate": 5e-4})
      for seed in (1, 2) for label, make in (("scratch", _scratch), ("fcmae", _fine_tune))],
]


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "FCMAE ablations, fine-tuned on 10 % of the digit labels (16 px)"
  config.base_config = "configs/fcmae_ablations_digits.py"
  config.base_config_arg = "finetune"
  config.workdir = "runs/sweeps/fcmae_ablations_finetune"
  config.overrides = []
  config.points = POINTS
  config.grid = []
  config.plot_metrics = ("train/loss", "eval/error", "eval/ema_error")
  config.summarize = False
  return config
