"""Experiment 3 at small scale: every step of the ConvNeXt roadmap, 2 seeds, one fixed recipe.

  JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache \
      python -m cnn_jax.sweep --config configs/sweeps/convnext_roadmap_digits.py

24 points of configs/convnext_roadmap_digits.py: model.step 0..11 x seed 0, 1, each step at
1/8 width (convnext_roadmap(width=0.125): 0.38-0.50 M params) on the embedded digits at 32 px,
250 steps of batch 64 (25 warm-up), AdamW 2e-3. The compilation cache lets the second seed of a
step reuse the first one's compiled step (same shapes). experiments/convnext_roadmap/ holds the
results; python -m cnn_jax.sweep ... --print_commands lists the 24 commands for a scheduler.
"""

import ml_collections

NUM_STEPS = 12


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "ConvNeXt roadmap at 1/8 width, digits 32 px, 250 steps"
  config.base_config = "configs/convnext_roadmap_digits.py"
  config.base_config_arg = ""
  config.workdir = "runs/sweeps/convnext_roadmap_digits"
  config.overrides = []
  config.points = []
  config.grid = [("model.step", tuple(range(NUM_STEPS))), ("seed", (0, 1))]
  config.plot_metrics = ("train/loss",)
  config.summarize = True
  return config
