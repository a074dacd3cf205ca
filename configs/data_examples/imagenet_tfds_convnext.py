"""ConvNeXt-T on ImageNet-1k from TFDS: the data section of the ConvNeXt recipe (Liu et al. 2022).

RandomResizedCrop 224 (scale 0.08-1, bicubic), flip, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25; on device: mixup 0.8 / cutmix 1.0 (switch 0.5) with label smoothing 0.1; eval
resize 256 + centre crop 224 (crop_pct 0.875, bicubic). Prepare imagenet2012 in array_record
format under data_dir first (`tfds build imagenet2012 --manual_dir=... --file_format=array_record`).
For FCMAE pre-training use data.crop_scale = (0.2, 1.0) and no RandAugment / mixing.
Optimizer and schedule are the base config's: the model-zoo configs set the recipe's.
"""

import os

import ml_collections

from cnn_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model = ml_collections.ConfigDict({"name": "convnext_tiny", "num_classes": 1000})
  config.data.source = "tfds"
  config.data.name = "imagenet2012"
  config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.channels = 3
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  config.data.augment = "imagenet"
  config.data.crop_scale = (0.08, 1.0)
  config.data.crop_ratio = (3 / 4, 4 / 3)
  config.data.hflip_prob = 0.5
  config.data.randaugment = "rand-m9-mstd0.5-inc1"
  config.data.random_erasing = 0.25
  config.data.interpolation = "bicubic"
  config.data.crop_pct = 0.875
  config.data.batch_size = 4096
  config.data.eval_batch_size = 1000
  config.data.num_workers = 8
  config.data.num_threads = 4
  config.data.mixup.mixup_alpha = 0.8
  config.data.mixup.cutmix_alpha = 1.0
  config.data.mixup.prob = 1.0
  config.data.mixup.switch_prob = 0.5
  config.label_smoothing = 0.1
  return config
