"""Any ImageFolder: DATA_DIR/train/<class>/*.jpg and DATA_DIR/val/<class>/*.jpg (JPEG/PNG/...).

  python -m cnn_jax.main --config configs/data_examples/imagefolder.py --workdir runs/folder \
      --config.data.data_dir=/path/to/folder --config.model.num_classes=N

Grayscale, CMYK and RGBA files are converted to RGB; corrupt files are skipped with a counted
warning (data.on_corrupt="fail" stops instead). ResNet-18 at 224 px with the torchvision
recipe's augmentation (RandomResizedCrop + flip), bilinear.
"""

import ml_collections

from cnn_jax import config as base


def get_config() -> ml_collections.ConfigDict:
  config = base.get_config()
  config.model = ml_collections.ConfigDict({"name": "resnet18", "num_classes": 1000})
  config.data.source = "imagefolder"
  config.data.name = "imagefolder"
  config.data.data_dir = ""
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.data.image_size = 224
  config.data.channels = 3
  config.data.augment = "imagenet"
  config.data.crop_scale = (0.08, 1.0)
  config.data.interpolation = "bilinear"
  config.data.crop_pct = 0.875
  config.data.on_corrupt = "skip"
  config.data.batch_size = 256
  config.data.eval_batch_size = 256
  config.data.num_workers = 4
  config.data.num_threads = 2
  return config
