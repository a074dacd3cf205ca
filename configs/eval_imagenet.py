"""Top-1 / top-5 of converted pretrained weights on an ImageNet validation set you have.

    python -m cnn_jax.convert --model convnextv2_tiny --checkpoint FILE --out weights/cnv2_t
    python -m cnn_jax.main --config configs/eval_imagenet.py:convnextv2_tiny \
        --config.init_from=weights/cnv2_t --config.data.data_dir=~/tensorflow_datasets \
        --workdir runs/eval_cnv2_t

The argument after ':' is the model name; it also picks timm's eval preprocessing for that
model's released weights (resize the shorter side to image_size / crop_pct, centre crop,
interpolation, mean/std; see PREPROCESSING). `--config.model.name=` alone keeps the
preprocessing of the argument (default convnextv2_tiny), so pass the name after ':' or override
the data fields too.

Data: TFDS `imagenet2012` (prepared in data_dir, split "validation"), or an ImageFolder with
`--config.data.source=imagefolder --config.data.data_dir=ROOT --config.data.eval_split=val
--config.data.train_split=val` (ROOT/val/<wnid>/*.JPEG, class folders sorted = the standard
class indices). No training happens (0 steps): the run restores the weights, evaluates the
eval split once and writes WORKDIR/final_metrics.json with `accuracy` (top-1) and
`top5_accuracy`. The train split is only opened, never read; it defaults to the eval split so
that a validation-only copy of ImageNet suffices.
"""

import ml_collections

from cnn_jax.config import get_config as base_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Model-name prefix -> (interpolation, crop_pct, mean, std) of the released weights' eval
# transform (timm pretrained_cfg / torchvision weights meta). First match wins.
PREPROCESSING = (
    ("vit_", ("bicubic", 0.9, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))),  # timm augreg weights
    ("convnext", ("bicubic", 0.875, IMAGENET_MEAN, IMAGENET_STD)),  # V1 and V2, timm and official
    ("resnet", ("bilinear", 0.875, IMAGENET_MEAN, IMAGENET_STD)),   # torchvision: 256 -> 224
    ("alexnet", ("bilinear", 0.875, IMAGENET_MEAN, IMAGENET_STD)),
)


def preprocessing(model_name: str) -> tuple[str, float, tuple[float, ...], tuple[float, ...]]:
  for prefix, settings in PREPROCESSING:
    if model_name.startswith(prefix):
      return settings
  raise ValueError(f"no eval preprocessing known for {model_name!r}; known prefixes: "
                   f"{', '.join(p for p, _ in PREPROCESSING)}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model_name = arg or "convnextv2_tiny"
  interpolation, crop_pct, mean, std = preprocessing(model_name)
  config = base_config()
  config.model = ml_collections.ConfigDict({"name": model_name, "num_classes": 1000})
  config.init_from = ""          # a directory written by cnn_jax.convert
  config.init_from_required = True  # evaluating a random init is never the intent
  config.init_head = "keep"

  config.data.source = "tfds"
  config.data.name = "imagenet2012"
  config.data.data_dir = ""
  config.data.train_split = "validation"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.channels = 3
  config.data.mean = mean
  config.data.std = std
  config.data.interpolation = interpolation
  config.data.crop_pct = crop_pct
  config.data.augment = "none"
  config.data.batch_size = 64
  config.data.eval_batch_size = 64

  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.0
  config.schedule.name = "constant"
  config.num_epochs = 0
  config.total_steps = 0         # evaluation only
  config.log_every_steps = 1
  config.eval_every_steps = 1
  config.checkpoint.use_async = False
  return config
