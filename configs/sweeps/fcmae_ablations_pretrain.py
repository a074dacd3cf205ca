"""ConvNeXt V2 ablations (Woo et al. 2023, Tables 1-3) at CPU scale, step 1: FCMAE pre-training.

  python -m cnn_jax.sweep --config configs/sweeps/fcmae_ablations_pretrain.py
  python -m cnn_jax.sweep --config configs/sweeps/fcmae_ablations_finetune.py

Five pre-training runs of a narrow three-stage ConvNeXt V2 (configs/fcmae_ablations_digits.py:
dims 16/32/64, depths 1/2/1) on all 1,497 training digits at 16 px, 12 epochs, seed 0: the
default (sparse encoder, mask ratio 0.6, GRN), GRN off, the plain dense masked encoder, and mask
ratios 0.4 and 0.8. Each exports its encoder to WORKDIR/POINT/encoder, which
configs/sweeps/fcmae_ablations_finetune.py fine-tunes. experiments/fcmae_ablations/ holds the
results.
"""

import ml_collections

# (label, overrides); every point names all three ablated fields so the table shows them.
POINTS = (
    ("fcmae", {"model.grn": True, "fcmae.sparse": True, "fcmae.mask_ratio": 0.6}),
    ("no_grn", {"model.grn": False, "fcmae.sparse": True, "fcmae.mask_ratio": 0.6}),
    ("dense", {"model.grn": True, "fcmae.sparse": False, "fcmae.mask_ratio": 0.6}),
    ("mask0.4", {"model.grn": True, "fcmae.sparse": True, "fcmae.mask_ratio": 0.4}),
    ("mask0.8", {"model.grn": True, "fcmae.sparse": True, "fcmae.mask_ratio": 0.8}),
)
WORKDIR = "runs/sweeps/fcmae_ablations_pretrain"


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "FCMAE pre-training ablations: narrow ConvNeXt V2, 8x8 digits at 16 px"
  config.base_config = "configs/fcmae_ablations_digits.py"
  config.base_config_arg = "pretrain"
  config.workdir = WORKDIR
  config.overrides = []
  config.points = [{"ablation": label, **overrides} for label, overrides in POINTS]
  config.grid = []
  config.plot_metrics = ("train/loss", "eval/loss")
  config.summarize = False  # the encoder+decoder is not a zoo model summary can build
  return config
