"""Our top-1 of released checkpoints on your ImageNet validation set, beside the published one.

    python experiments/released_weights/check.py --weights_dir ~/weights \
        --data ~/imagenet --source imagefolder          # ~/imagenet/val/<wnid>/*.JPEG
    python experiments/released_weights/check.py --weights_dir ~/weights \
        --data ~/tensorflow_datasets --source tfds      # imagenet2012, array_record

Every checkpoint in CHECKPOINTS whose file is in --weights_dir (names as README.md's download
commands write them) is loaded with `create_model(name, pretrained=FILE)` (converted in memory,
same checks as `python -m cnn_jax.convert`) and evaluated with the eval transform its published
number was measured with (test size, crop_pct, interpolation, mean / std). One line per
checkpoint: expected top-1, ours, the difference. --only picks rows; --limit N evaluates the
first N images only (a quick look, not comparable to the table).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

from absl import flags  # noqa: E402

from cnn_jax import cli  # noqa: E402
from cnn_jax.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
TIMM_RESULTS = ("timm results/results-imagenet.csv (huggingface/pytorch-image-models, "
                "commit 0173a139)")
TORCHVISION_DOCS = "torchvision model docs (acc@1 of IMAGENET1K_V1 weights)"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  file: str            # name in --weights_dir
  model: str           # cnn_jax model name
  top1: float          # published top-1 (%)
  image_size: int
  crop_pct: float
  interpolation: str
  source: str          # where the number comes from
  url: str


def _timm(tag: str, model: str, top1: float, size: int, crop: float,
          interpolation: str = "bicubic") -> Checkpoint:
  return Checkpoint(f"{tag}.safetensors", model, top1, size, crop, interpolation, TIMM_RESULTS,
                    f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors")


def _official(file: str, model: str, top1: float, url: str, paper: str) -> Checkpoint:
  return Checkpoint(file, model, top1, 224, 0.875, "bicubic", paper, url)


_V1 = "https://dl.fbaipublicfiles.com/convnext/"
_V2 = "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/"
_V1_PAPER = "Liu et al. 2022, A ConvNet for the 2020s, Table 1 (ImageNet-1K, 224)"
_V2_PAPER = ("Woo et al. 2023, ConvNeXt V2 (FCMAE + ImageNet-1K fine-tuning, 224), as the "
             "official README lists them")

CHECKPOINTS = (
    # timm (huggingface.co/timm), at the test size timm's table uses.
    _timm("convnextv2_atto.fcmae_ft_in1k", "convnextv2_atto", 77.760, 288, 0.95),
    _timm("convnextv2_femto.fcmae_ft_in1k", "convnextv2_femto", 79.338, 288, 0.95),
    _timm("convnextv2_pico.fcmae_ft_in1k", "convnextv2_pico", 81.086, 288, 0.95),
    _timm("convnextv2_nano.fcmae_ft_in1k", "convnextv2_nano", 82.486, 288, 1.0),
    _timm("convnextv2_tiny.fcmae_ft_in1k", "convnextv2_tiny", 83.464, 288, 1.0),
    _timm("convnextv2_base.fcmae_ft_in1k", "convnextv2_base", 85.474, 288, 1.0),
    _timm("convnextv2_large.fcmae_ft_in1k", "convnextv2_large", 86.118, 288, 1.0),
    _timm("convnextv2_huge.fcmae_ft_in1k", "convnextv2_huge", 86.580, 288, 1.0),
    _timm("convnext_tiny.fb_in1k", "convnext_tiny", 82.698, 288, 1.0),
    _timm("convnext_small.fb_in1k", "convnext_small", 83.700, 288, 1.0),
    _timm("convnext_base.fb_in1k", "convnext_base", 84.428, 288, 1.0),
    _timm("convnext_large.fb_in1k", "convnext_large", 84.846, 288, 1.0),
    _timm("resnet18.tv_in1k", "resnet18", 69.760, 224, 0.875, "bilinear"),
    _timm("resnet50.tv_in1k", "resnet50", 76.130, 224, 0.875, "bilinear"),
    _timm("resnet101.tv_in1k", "resnet101", 77.376, 224, 0.875, "bilinear"),
    _timm("resnet152.tv_in1k", "resnet152", 78.322, 224, 0.875, "bilinear"),
    _timm("resnet50.a1_in1k", "resnet50", 81.214, 288, 1.0),
    _timm("vit_tiny_patch16_224.augreg_in21k_ft_in1k", "vit_tiny_patch16_224", 75.454, 224, 0.9),
    _timm("vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_small_patch16_224", 81.384, 224,
          0.9),
    _timm("vit_base_patch16_224.augreg_in21k_ft_in1k", "vit_base_patch16_224", 84.532, 224, 0.9),
    _timm("vit_large_patch16_224.augreg_in21k_ft_in1k", "vit_large_patch16_224", 85.834, 224,
          0.9),
    # torchvision (.pth: reading it needs torch, an optional extra).
    Checkpoint("resnet34-b627a593.pth", "resnet34", 73.314, 224, 0.875, "bilinear",
               TORCHVISION_DOCS, "https://download.pytorch.org/models/resnet34-b627a593.pth"),
    Checkpoint("alexnet-owt-7be5be79.pth", "alexnet", 56.522, 224, 0.875, "bilinear",
               TORCHVISION_DOCS, "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    # Official repositories (facebookresearch/ConvNeXt, ConvNeXt-V2), 224 px, crop 0.875.
    _official("convnext_tiny_1k_224_ema.pth", "convnext_tiny", 82.1,
              _V1 + "convnext_tiny_1k_224_ema.pth", _V1_PAPER),
    _official("convnext_small_1k_224_ema.pth", "convnext_small", 83.1,
              _V1 + "convnext_small_1k_224_ema.pth", _V1_PAPER),
    _official("convnext_base_1k_224_ema.pth", "convnext_base", 83.8,
              _V1 + "convnext_base_1k_224_ema.pth", _V1_PAPER),
    _official("convnextv2_atto_1k_224_ema.pt", "convnextv2_atto", 76.7,
              _V2 + "convnextv2_atto_1k_224_ema.pt", _V2_PAPER),
    _official("convnextv2_nano_1k_224_ema.pt", "convnextv2_nano", 81.9,
              _V2 + "convnextv2_nano_1k_224_ema.pt", _V2_PAPER),
    _official("convnextv2_tiny_1k_224_ema.pt", "convnextv2_tiny", 83.0,
              _V2 + "convnextv2_tiny_1k_224_ema.pt", _V2_PAPER),
    _official("convnextv2_base_1k_224_ema.pt", "convnextv2_base", 84.9,
              _V2 + "convnextv2_base_1k_224_ema.pt", _V2_PAPER),
)


def define_flags() -> None:
  flags.DEFINE_string("weights_dir", None, "Directory with the downloaded checkpoint files.")
  flags.DEFINE_string("data", None, "ImageFolder root (with val/) or TFDS data_dir.")
  flags.DEFINE_enum("source", "imagefolder", ["imagefolder", "tfds"], "Kind of --data.")
  flags.DEFINE_string("split", "", "Split: val (imagefolder) / validation (tfds) by default.")
  flags.DEFINE_list("only", [], "Checkpoint files (or model names) to evaluate; default: all "
                    "present in --weights_dir.")
  flags.DEFINE_integer("limit", 0, "Evaluate only the first N images (0 = all 50,000).")
  flags.DEFINE_integer("batch_size", 128, "Global batch size (a multiple of the devices).")
  flags.DEFINE_integer("num_threads", 16, "Decoding threads.")


def eval_source(data: str, source: str, split: str):
  from cnn_jax.data.sources import imagefolder, tfds  # pylint: disable=import-outside-toplevel
  if source == "tfds":
    return tfds.TfdsSource("imagenet2012", os.path.expanduser(data), split or "validation")
  root = os.path.join(os.path.expanduser(data), split or "val")
  found = imagefolder.ImageFolderSource(root)
  if found.num_classes != 1000:
    raise UserError(f"{root} has {found.num_classes} class folders; ImageNet-1k val has 1000 "
                    "(one per WordNet id, e.g. n01440764)")
  return found


def evaluate(row: Checkpoint, path: str, source, limit: int, batch_size: int,
             num_threads: int) -> tuple[float, int]:
  """(top-1 %, images) of the checkpoint at `path` on `source`."""

  from cnn_jax import predict  # pylint: disable=import-outside-toplevel
  from cnn_jax.data import class_names, pipeline, transforms  # pylint: disable=import-outside-toplevel
  from cnn_jax.data.sources.images import RecordLoader  # pylint: disable=import-outside-toplevel
  from cnn_jax.models import create_model  # pylint: disable=import-outside-toplevel

  data_config = predict.eval_data_config(row.model)
  data_config.unlock()
  data_config.image_size = row.image_size
  data_config.crop_pct = row.crop_pct
  data_config.interpolation = row.interpolation
  options = {"image_size": row.image_size} if row.model.startswith("vit_") else {}
  model = create_model(row.model, pretrained=path, **options)
  loaded = predict.Loaded(row.model, model, data_config, class_names.imagenet())
  predictor = predict.Predictor(loaded, top_k=1, cam=False)
  if limit:
    source = _Head(source, limit)
  batches = pipeline.EvalBatches(
      RecordLoader(source, 3, "skip"), transforms.EvalTransform(data_config),
      (row.image_size, row.image_size, 3), global_batch_size=batch_size,
      num_threads=num_threads)
  correct = seen = 0
  for batch in batches:
    rows = int(batch["mask"].sum())
    # The padded last batch at the full batch's shape: no second compile.
    _, indices, _ = predictor(list(batch["image"][:rows]), len(batch["image"]))
    correct += int((indices[:, 0] == batch["label"][:rows]).sum())
    seen += rows
  return 100.0 * correct / max(seen, 1), seen


class _Head:
  """The first `n` records of a source."""

  def __init__(self, source, n: int):
    self.source, self.n, self.name = source, min(n, len(source)), source.name

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int):
    return self.source[index]


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  if not FLAGS.weights_dir or not os.path.isdir(os.path.expanduser(FLAGS.weights_dir)):
    raise UserError(f"--weights_dir {FLAGS.weights_dir} is not a directory")
  if not FLAGS.data:
    raise UserError("--data is required (ImageFolder root or TFDS data_dir)")
  weights_dir = os.path.expanduser(FLAGS.weights_dir)
  rows = [r for r in CHECKPOINTS if os.path.isfile(os.path.join(weights_dir, r.file))]
  if FLAGS.only:
    rows = [r for r in CHECKPOINTS if r.file in FLAGS.only or r.model in FLAGS.only]
    missing = [r.file for r in rows if not os.path.isfile(os.path.join(weights_dir, r.file))]
    if missing:
      raise UserError(f"not in {weights_dir}: {', '.join(missing)} (see README.md for the "
                      "download commands)")
  if not rows:
    raise UserError(f"{weights_dir} holds none of the checkpoint files README.md lists "
                    f"(e.g. {CHECKPOINTS[0].file})")
  source = eval_source(FLAGS.data, FLAGS.source, FLAGS.split)
  print(f"{'checkpoint':<48} {'model':<22} {'size':>4} {'crop':>5} {'expected':>8} "
        f"{'ours':>7} {'diff':>6}  images  time", flush=True)
  for row in rows:
    start = time.perf_counter()
    top1, seen = evaluate(row, os.path.join(weights_dir, row.file), source, FLAGS.limit,
                          FLAGS.batch_size, FLAGS.num_threads)
    print(f"{row.file:<48} {row.model:<22} {row.image_size:>4} {row.crop_pct:>5.3f} "
          f"{row.top1:>8.3f} {top1:>7.3f} {top1 - row.top1:>+6.2f}  {seen:>6}  "
          f"{time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
