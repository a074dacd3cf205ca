"""ConvNeXt-T on ImageNet-1k from TFDS: the data section of the ConvNeXt recipe (Liu et al. 2022).

RandomResizedCrop 224 (scale 0.08-1, bicubic), flip, RandAugment rand-m9-mstd0.5-inc1, random
erasing 0.25; on device: mixup 0.8 / cutmix 1.0 (switch 0.5) with label smoothing 0.1; eval
resize 256 + centre crop 224 (crop_pct 0.875, bicubic). Prepare imagenet2012 in array_record
format under data_dir first (`tfds build imagenet2012 --manual_dir=... --file_format=array_record`).
For FCMAE pre-training use data.crop_scale = (0.2, 1.0) and no RandAugment / mixing.
Optimizer and schedule are the base config's: the model-zoo configs set the recipe's.
"""

import ml_collections

from cnn_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model = ml_collections.ConfigDict({"name": "convnext_tiny", "num_classes": 1000})
  base.set_imagenet_data(config, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25,
                         mixup_alpha=0.8, cutmix_alpha=1.0, interpolation="bicubic",
                         batch_size=4096)
  config.label_smoothing = 0.1
  return config
