"""Inductive bias: a CNN and a ViT of the same size, trained on part of the data.

    python -m cnn_jax.main --config configs/inductive_bias.py:vit60x6 --workdir runs/ib_vit \
        --config.data.train_fraction=0.1

The config argument is "MODEL[,cifar10]". MODEL is one of two models matched in parameters
(cnn_jax.summary, 10 classes, 1 channel; +1,920 / +0 with 3 channels):
  resnet20   CIFAR ResNet-20 (He et al. 2016, option A): 269,434 params, 40.3 MMACs at 32 px
  vit60x6    vit_tiny_patch4_32 narrowed to width 60, 6 blocks, 3 heads (patch 4, 65 tokens):
             269,590 params (+0.06 %), 20.0 MMACs at 32 px
Both train with one recipe (AdamW, warmup + cosine, weight decay on kernels, grad clipping):
the only difference is the architecture. Without ",cifar10" the data are the embedded MNIST
subset at 32 px (4,000 train / 1,000 test, +-2 px shifts; data.train_fraction takes a nested,
class-stratified subset); with it, CIFAR-10 from TFDS (pad-4 crop + flip; the subset is
data.train_split = "train[:10%]" etc.). The sweeps in configs/sweeps/inductive_bias_*.py fix
the number of steps and warmup steps across data sizes.
"""

from __future__ import annotations

import os

import ml_collections

from cnn_jax import config as base

MODELS: dict[str, dict] = {
    "resnet20": dict(name="resnet20"),
    "vit60x6": dict(name="vit_tiny_patch4_32", image_size=32, embed_dim=60, depth=6,
                    num_heads=3),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model_key, _, dataset = (arg or "resnet20").partition(",")
  if model_key not in MODELS:
    raise ValueError(f"unknown model preset {model_key!r}; known: {', '.join(MODELS)}")
  if dataset not in ("", "digits", "cifar10"):
    raise ValueError(f"unknown data set {dataset!r}; known: digits (default), cifar10")
  cifar = dataset == "cifar10"
  config = base.get_config()
  config.model = ml_collections.ConfigDict(
      {**MODELS[model_key], "num_classes": 10, "in_channels": 3 if cifar else 1})

  if cifar:
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.channels = 3
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)
    config.data.augment = "cifar"
    config.data.cifar_pad = 4
    config.data.hflip_prob = 0.5
    config.data.crop_pct = 1.0
    config.data.batch_size = 128
    config.data.eval_batch_size = 500
    config.data.num_threads = 4
    config.total_steps = 40000  # ~100 epochs of the full train split at batch 128
    config.schedule.warmup_epochs = 5.0
    config.log_every_steps = 100
    config.eval_every_steps = 2000
    config.checkpoint.every_steps = 2000
  else:
    config.data.source = "embedded"
    config.data.name = "mnist_subset"
    config.data.num_test = 1000
    config.data.split_seed = 0
    config.data.max_shift = 2
    config.data.batch_size = 64
    config.data.eval_batch_size = 200
    config.total_steps = 600
    config.schedule.warmup_epochs = 1.0
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.checkpoint.every_steps = 200
  config.data.image_size = 32

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.weight_decay = 0.05
  config.optimizer.weight_decay_on = "kernels"
  config.optimizer.grad_clip_norm = 1.0
  config.schedule.name = "warmup_cosine"
  config.checkpoint.keep = 1
  return config
