"""The ImageNet training pipeline of the ConvNeXt recipe, for `python -m cnn_jax.data_bench`.

224 px RandomResizedCrop (0.08-1, bicubic), flip, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25, over an ImageFolder of JPEGs (data_bench writes ImageNet-sized ones when
data.data_dir is empty). Mixup/cutmix run on device in the train step, not here.
"""

import ml_collections

from cnn_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.data.source = "imagefolder"
  config.data.name = "imagenet_like_jpegs"
  config.data.data_dir = ""
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.image_size = 224
  config.data.channels = 3
  config.data.batch_size = 64
  config.data.eval_batch_size = 64
  config.data.augment = "imagenet"
  config.data.crop_scale = (0.08, 1.0)
  config.data.randaugment = "rand-m9-mstd0.5-inc1"
  config.data.random_erasing = 0.25
  config.data.interpolation = "bicubic"
  config.data.crop_pct = 0.875
  # Best on the 2-core machine: 2 read threads in-process (PIL releases the GIL); on a
  # many-core host use worker processes (num_workers > 0). See experiments/data_pipeline/.
  config.data.num_workers = 0
  config.data.num_threads = 2
  config.data.prefetch_batches = 2
  config.data.normalise_on_device = True  # as the ImageNet recipes
  config.data.train_resampling = "opencv"  # as the ImageNet recipes
  config.data.mixup.mixup_alpha = 0.8
  config.data.mixup.cutmix_alpha = 1.0
  config.label_smoothing = 0.1
  return config
