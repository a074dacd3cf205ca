"""Activations at CPU scale: sigmoid, tanh, ReLU and GELU in plain and residual nets of 20 and
56 layers, on the 8x8 digits.

  python -m cnn_jax.sweep --config configs/sweeps/activations_digits.py
  python experiments/activations/report.py    # table, curves, per-layer gradient norms
  python -m cnn_jax.sweep --config configs/sweeps/activations_digits.py:1   # the same, seed 1

Sixteen points of configs/resnet_cifar_digits.py (same recipe and seed): scikit-learn's 1,797
8x8 digits at their native 8x8 (1,497 train / 300 test; the three stages work on 8/4/2 px maps),
15 epochs of batch 64 (345 steps). 8x8 rather than the degradation sweep's 16x16 because 16
nets at 16x16 do not fit a shared 2-core CPU's budget (a timing probe: plain56 runs ~3x faster
per step at 8x8). The training accuracy is logged every step so that the report can find the
first epoch at which the (one-epoch moving average of the) training error reaches a target
(AlexNet's 25 %, and 10 %). Models are the outer loop, so a partial run still compares all four
activations at depth 20. experiments/activations/ holds the results.
"""

import ml_collections

ACTIVATIONS = ("sigmoid", "tanh", "relu", "gelu")
MODELS = ("plain20", "resnet20", "plain56", "resnet56")


def get_config(seed: str = "0") -> ml_collections.ConfigDict:
  """`seed`: the training seed of every point (init and data order); other than 0, it names the
  sweep and its workdir (a repeat of the whole grid)."""
  seed = int(seed)
  config = ml_collections.ConfigDict()
  config.name = ("activations: sigmoid/tanh/relu/gelu x plain/residual x 20/56 layers, "
                 "8x8 digits" + (f", seed {seed}" if seed else ""))
  config.base_config = "configs/resnet_cifar_digits.py"
  config.base_config_arg = ""
  config.workdir = "runs/sweeps/activations_digits" + (f"_seed{seed}" if seed else "")
  config.overrides = [("data.name", "digits"), ("data.image_size", 8), ("data.num_test", 300),
                      ("data.max_shift", 1), ("data.batch_size", 64),
                      ("data.eval_batch_size", 300), ("num_epochs", 15),
                      ("log_every_steps", 1), ("eval_every_steps", 23),
                      ("checkpoint.every_steps", 115)] + ([("seed", seed)] if seed else [])
  config.points = []
  config.grid = [("model.name", MODELS), ("model.activation", ACTIVATIONS)]
  config.plot_metrics = ("train/loss", "train/error", "eval/error")
  config.summarize = False  # Params and MACs do not depend on the activation.
  return config
