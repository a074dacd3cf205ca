"""The base config: fields every experiment has; configs/*.py start from `get_config()` here.

A config names everything an experiment depends on: there are no defaults in the code that
change results. Override any field on the command line: --config.optimizer.learning_rate=0.01
"""

import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Every field besides `name` is passed to the model constructor.
  config.model = ml_collections.ConfigDict({"name": "lenet5"})

  config.data = ml_collections.ConfigDict()
  # Where the images come from: embedded (digits shipped in pip packages) | tfds | imagefolder
  # | webdataset | synthetic. See the README's "Data" section.
  config.data.source = "embedded"
  config.data.name = "mnist_subset"   # embedded: mnist_subset|digits|long_range; tfds: TFDS name
  config.data.data_dir = ""            # tfds: TFDS data_dir; imagefolder: root of split dirs
  config.data.train_split = "train"    # tfds: split syntax ("train[:90%]"); imagefolder: subdir
  config.data.eval_split = "test"
  # webdataset: data_dir holds the .tar shards, the splits are names or brace patterns
  # ("train-{0000..1023}.tar"); num_classes 0 = 1 + the largest train label.
  config.data.num_classes = 0
  # tfds (tfrecord format) / webdataset: where the per-shard indexes of record offsets are
  # cached ("" = ~/.cache/cnn_jax/...); never inside data_dir.
  config.data.index_dir = ""
  config.data.image_size = 32
  config.data.channels = 3             # tfds/imagefolder/synthetic: 3 (RGB) or 1 (grayscale)
  config.data.num_test = 1000          # embedded: size of the fixed test split
  config.data.split_seed = 0           # embedded: the fixed train/test split
  # embedded, imagefolder: train on this class-stratified fraction of the train split (1.0 =
  # all); deterministic from split_seed and nested (10 % inside 25 %). tfds: use train_split.
  config.data.train_fraction = 1.0
  config.data.batch_size = 128         # global, across all devices and processes
  config.data.eval_batch_size = 256
  config.data.max_shift = 0            # embedded: random +-px translation of training images
  # Normalisation (tfds/imagefolder/synthetic; embedded sets use their train-split statistics).
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  # Train augmentation (tfds/imagefolder/synthetic): "imagenet" = RandomResizedCrop + flip
  # (+ RandAugment, random erasing); "cifar" = pad + random crop + flip; "none" = eval transform.
  config.data.augment = "imagenet"
  config.data.crop_scale = (0.08, 1.0)  # RandomResizedCrop area range (FCMAE: (0.2, 1.0))
  config.data.crop_ratio = (0.75, 4.0 / 3.0)
  config.data.hflip_prob = 0.5
  config.data.randaugment = ""          # timm spec, e.g. "rand-m9-mstd0.5-inc1"; "" = off
  config.data.random_erasing = 0.0      # probability (ConvNeXt: 0.25), timm "pixel" mode
  config.data.cifar_pad = 4
  config.data.interpolation = "bicubic"  # bicubic | bilinear: train crops and eval resize
  # Which library resamples "imagenet" train images (the RandomResizedCrop resize, RandAugment's
  # rotate/shear/translate): pil = timm's pixels; opencv = the same crops and draws, about 2x
  # cheaper, pixels slightly different (Gaussian antialias when shrinking, then cubic/linear).
  # Eval is always PIL (timm's).
  config.data.train_resampling = "pil"
  config.data.crop_pct = 0.875          # eval: resize to image_size / crop_pct, centre crop
  # Train decoding: simplejpeg (libjpeg-turbo; other formats via PIL) | pil. A JPEG is decoded
  # reduced by a DCT scale (1/2, 5/8, ...) when the crop's shorter side is at least
  # reduced_decode x image_size (0 = always full size).
  config.data.decoder = "simplejpeg"
  config.data.reduced_decode = 2.0
  # Train batches leave the host as uint8 (4x less to copy) and are normalised (and randomly
  # erased) on the accelerator in the train step. Off: normalised float32 on the host.
  config.data.normalise_on_device = False
  # In-memory sets (the embedded digits, the long-range task; other sources ignore it): the
  # normalised, padded set is placed on every device once, and each batch is its rows' indices
  # and shifts, whose crops the train step cuts (the same images). Off: the host gathers them.
  config.data.crop_on_device = False
  config.data.on_corrupt = "skip"       # skip (counted warning, next image instead) | fail
  config.data.num_workers = 0           # grain worker processes decoding (0 = threads only)
  config.data.num_threads = 8           # grain read threads per process (0 = none: in the loop)
  config.data.prefetch_batches = 2      # batches buffered per worker process
  # Batches whose host-to-device copy is issued while earlier steps run (0 = copy each batch
  # when its step starts, which leaves the accelerator waiting for the transfer).
  config.data.prefetch_to_device = 2
  config.data.synthetic = ml_collections.ConfigDict(
      {"num_train": 1024, "num_eval": 256, "num_classes": 10})
  # embedded name "long_range": two digits `distance` px apart (centre to centre) on an
  # image_size canvas, label = a relation between them (cnn_jax/data/sources/long_range.py).
  config.data.long_range = ml_collections.ConfigDict(
      {"task": "same", "distance": 28, "digit_size": 14, "digit_classes": 10,
       "num_train": 8000, "num_eval": 2000, "seed": 0})
  # Batch-level mixing on device (timm Mixup semantics); off while both alphas are 0.
  # Soft targets use the top-level `label_smoothing`.
  config.data.mixup = ml_collections.ConfigDict(
      {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5})

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"      # adamw | sgd | lamb | lars (cnn_jax/optim.py)
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.optimizer.weight_decay_on = "kernels"  # kernels | all
  config.optimizer.b1 = 0.9            # b1, b2, eps: adamw, lamb
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.momentum = 0.9      # momentum, nesterov: sgd, lars
  config.optimizer.nesterov = False
  config.optimizer.grad_clip_norm = 0.0  # 0 = off
  config.optimizer.scale_lr_by_batch_over = 0  # e.g. 256: lr = learning_rate * batch / 256
  config.optimizer.layer_decay = 1.0     # < 1: layer-wise lr decay (ConvNeXt, ViT)
  config.optimizer.grad_accum_steps = 1  # > 1: one update every k steps (optax.MultiSteps)

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = "warmup_cosine"  # constant | warmup_cosine | onecycle | step
  config.schedule.warmup_epochs = 0.0
  config.schedule.init_lr_fraction = 0.0
  config.schedule.end_lr_fraction = 0.0
  config.schedule.decay_steps = ()       # 'step' schedule: multiply by decay_factor here
  config.schedule.decay_factor = 0.1

  # What a run optimises: "classification" (train.py) or "fcmae" (ConvNeXt V2 masked-autoencoder
  # pre-training, cnn_jax/fcmae.py, configured by `fcmae`; the paper's defaults below).
  config.task = "classification"
  config.fcmae = ml_collections.ConfigDict({
      "mask_ratio": 0.6,          # fraction of patches hidden per image
      "patch_size": 32,           # mask patch = the encoder's total stride
      "decoder_dim": 512,
      "decoder_depth": 1,         # ConvNeXt V2 blocks in the decoder
      "norm_pix_loss": True,      # targets normalised per patch
      "sparse": True,             # False: the paper's dense-encoder ablation
      "reconstruction_every_steps": 1000,  # PNG + TensorBoard image; 0 = only at the end
      "num_reconstructions": 8,   # images (rows) in that grid
  })

  config.label_smoothing = 0.0
  config.ema_decay = 0.0               # > 0: keep an EMA of the parameters, evaluate both
  config.num_epochs = 1
  config.total_steps = 0               # > 0 overrides num_epochs
  config.halt_after_steps = 0          # > 0: stop this invocation early (a rerun resumes)

  # How convolutions are computed (same parameters and results): "auto" = XLA's conv off CPU;
  # on CPU, per conv and max pool that has one of the exact CPU forms of
  # cnn_jax/models/cpu_ops.py (depthwise by shifted multiply-adds, 1x1 and patchify convs as
  # matmuls, max pooling by strided views) or, for float32 convs in a one-device process,
  # oneDNN's conv (cnn_jax/models/onednn.py), whichever form measured fastest on this CPU model
  # and shape, measured once and cached (cnn_jax/models/autotune.py); "xla" = XLA's conv
  # everywhere; "rewrite" = the forms anywhere; "onednn" = oneDNN's conv for every float32 conv
  # (CPU only), the CPU forms for the rest. None of the three measures.
  config.conv_impl = "auto"

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = -1         # -1 = all visible devices
  config.mesh.strategy = "data_parallel"  # data_parallel | fsdp
  config.mesh.fsdp_min_size = 2 ** 14  # fsdp: smaller arrays stay replicated

  config.log_every_steps = 50
  config.eval_every_steps = 500

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 3
  config.checkpoint.use_async = True
  # Besides the last `keep`, keep the checkpoint with the best eval metric (an eval that beats
  # it is saved too); "" = off. Classification: loss | accuracy | top5_accuracy, and ema_* with
  # an EMA; FCMAE: loss.
  config.checkpoint.best_metric = "accuracy"
  config.checkpoint.best_mode = "max"   # max | min

  # Start from converted pretrained weights: a directory written by python -m cnn_jax.convert
  # ("" = random init). init_head: "keep" the checkpoint's classifier (same classes) or "drop"
  # it for a freshly initialised one (another number of classes; FCMAE encoder checkpoints).
  config.init_from = ""
  config.init_head = "keep"
  # True in recipes that only make sense from pretrained weights (fine-tuning, evaluation): an
  # empty init_from then stops the run before it starts instead of silently training from
  # random init. A deliberate from-scratch baseline of such a recipe sets it False.
  config.init_from_required = False
  return config


def set_imagenet_data(config: ml_collections.ConfigDict, *, randaugment: str,
                      random_erasing: float, mixup_alpha: float, cutmix_alpha: float,
                      interpolation: str, batch_size: int) -> None:
  """The ImageNet-1k data section shared by the paper recipes (TFDS imagenet2012, 224 px)."""
  data = config.data
  data.source = "tfds"
  data.name = "imagenet2012"
  data.data_dir = os.path.expanduser("~/tensorflow_datasets")
  data.train_split = "train"
  data.eval_split = "validation"
  data.image_size = 224
  data.channels = 3
  data.mean = (0.485, 0.456, 0.406)
  data.std = (0.229, 0.224, 0.225)
  data.augment = "imagenet"
  data.crop_scale = (0.08, 1.0)
  data.crop_ratio = (3 / 4, 4 / 3)
  data.hflip_prob = 0.5
  data.randaugment = randaugment
  data.random_erasing = random_erasing
  data.interpolation = interpolation
  data.crop_pct = 0.875
  # uint8 batches to the accelerator, normalised (and erased) there.
  data.normalise_on_device = True
  # Host CPU is what feeds the accelerators: OpenCV's resize and warps halve the train
  # pipeline's CPU time for the same crops, flips and RandAugment draws, at about one grey
  # level of mean difference from timm's PIL pixels ("pil" to reproduce those exactly).
  data.train_resampling = "opencv"
  data.batch_size = batch_size
  data.eval_batch_size = 1000
  data.num_workers = 8
  data.num_threads = 4
  data.mixup.mixup_alpha = mixup_alpha
  data.mixup.cutmix_alpha = cutmix_alpha
  data.mixup.prob = 1.0
  data.mixup.switch_prob = 0.5


def set_cifar10_data(config: ml_collections.ConfigDict) -> None:
  """The CIFAR-10 data section of He et al. 2016 (TFDS cifar10): a 45k/5k train/val split of the
  train set, pad-4 random crop + flip, no resize at eval, per-channel mean/std."""
  data = config.data
  data.source = "tfds"
  data.name = "cifar10"
  data.data_dir = os.path.expanduser("~/tensorflow_datasets")
  data.train_split = "train[:90%]"
  data.eval_split = "train[90%:]"
  data.image_size = 32
  data.channels = 3
  data.mean = (0.4914, 0.4822, 0.4465)
  data.std = (0.2470, 0.2435, 0.2616)
  data.augment = "cifar"
  data.cifar_pad = 4
  data.hflip_prob = 0.5
  data.crop_pct = 1.0
  data.batch_size = 128
  data.eval_batch_size = 500
  data.num_workers = 0
  data.num_threads = 4


def shrink_to_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same recipe at a size that runs in seconds on a CPU: synthetic 32 px data, 10
  classes, 3 steps. The model, optimizer, schedule shape and augmentations stay the recipe's."""
  config.data.source = "synthetic"
  config.data.name = "smoke"
  config.data.image_size = 32
  config.data.synthetic = ml_collections.ConfigDict(
      {"num_train": 64, "num_eval": 16, "num_classes": 10})
  config.data.batch_size = 16
  config.data.eval_batch_size = 16
  config.data.num_workers = 0
  config.data.num_threads = 1
  config.model.num_classes = 10
  config.optimizer.scale_lr_by_batch_over = 0
  config.num_epochs = 0
  config.total_steps = 3
  config.schedule.warmup_epochs = 0.25  # one step of the 4-step epoch
  if "decay_steps" in config.schedule and config.schedule.name == "step":
    config.schedule.decay_steps = (2,)
  config.log_every_steps = 1
  config.eval_every_steps = 3
  config.checkpoint.every_steps = 3
  return config
