"""The input pipeline alone, in images/s: python -m cnn_jax.data_bench --config CONFIG

  python -m cnn_jax.data_bench --config configs/data_examples/imagenet_bench.py

With `data.source = "imagefolder"` and an empty `data.data_dir`, it first writes
`--num_images` JPEGs of ImageNet's typical size (about 500x375, quality 90, smooth content
plus noise, ~100-150 kB each) into a temporary ImageFolder (or `--jpeg_dir`, reused if it
exists), so the figure covers JPEG decoding as well as augmentation. It then pulls
`--warmup_steps` + `--steps` training batches through `train.iterate(0)` and prints the
images/s of the measured steps. Any config field can be overridden (--config.data.num_workers=4).

Comparisons, measured back to back in one process (`--rounds` alternating turns, medians; on
a loaded machine only the ratios mean much):
  --formats=imagefolder,tfrecord,webdataset   the same generated JPEGs read from an
      ImageFolder, a TFDS set in the tfrecord format and WebDataset tar shards
  --variants=before,after,opencv   the train decode path: `before` = PIL decode, full-size
      decode, float32 normalised on the host; `after` = simplejpeg, reduced-size DCT decode
      when the crop is >= 2x the output, uint8 batches normalised on the device; `opencv` =
      `after` with data.train_resampling = "opencv" (`config`: as the config says)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import ml_collections
from absl import flags

from cnn_jax import cli

FLAGS = flags.FLAGS


# Decode-path settings of --variants.
VARIANTS = {
    "before": {"decoder": "pil", "reduced_decode": 0.0, "normalise_on_device": False,
               "train_resampling": "pil"},
    "after": {"decoder": "simplejpeg", "reduced_decode": 2.0, "normalise_on_device": True,
              "train_resampling": "pil"},
    "opencv": {"decoder": "simplejpeg", "reduced_decode": 2.0, "normalise_on_device": True,
               "train_resampling": "opencv"},
}
BENCH_TFDS_NAME = "cnn_jax_bench_jpegs"


def write_tfrecord_set(jpeg_root: str, out_root: str) -> None:
  """The train/val JPEGs of `write_jpegs` as a TFDS set in the tfrecord format (the same JPEG
  bytes, TFDS's own dataset_info.json / features.json), built without TensorFlow: TFDS writes
  array_record, whose records are copied into TFRecord shards."""
  import json

  import tensorflow_datasets as tfds
  from array_record.python.array_record_module import ArrayRecordReader

  from cnn_jax.data.sources import imagefolder, tfrecord

  splits = {s: imagefolder.ImageFolderSource(os.path.join(jpeg_root, s)) for s in ("train", "val")}

  class CnnJaxBenchJpegs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, supervised_keys=("image", "label"),
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(encoding_format="jpeg"),
              "label": tfds.features.ClassLabel(num_classes=splits["train"].num_classes)}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in splits}

    def _generate_examples(self, split):
      for i, (path, label) in enumerate(zip(splits[split].paths, splits[split].labels)):
        yield i, {"image": path, "label": int(label)}  # A path: its bytes are stored as is.

  staging = os.path.join(out_root, "staging")
  CnnJaxBenchJpegs(data_dir=staging, file_format="array_record").download_and_prepare()
  src = os.path.join(staging, BENCH_TFDS_NAME, "1.0.0")
  dst = os.path.join(out_root, BENCH_TFDS_NAME, "1.0.0")
  os.makedirs(dst, exist_ok=True)
  for name in os.listdir(src):
    if ".array_record-" in name:
      reader = ArrayRecordReader(os.path.join(src, name))
      tfrecord.write_tfrecord(os.path.join(dst, name.replace(".array_record-", ".tfrecord-")),
                              reader.read_all())
      reader.close()
  with open(os.path.join(src, "dataset_info.json")) as f:
    info = json.load(f)
  info["fileFormat"] = "tfrecord"
  with open(os.path.join(dst, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  shutil.copy(os.path.join(src, "features.json"), dst)
  shutil.rmtree(staging)


def write_shards(jpeg_root: str, out_root: str, images_per_shard: int = 128) -> None:
  """The train/val JPEGs of `write_jpegs` as WebDataset shards `{split}-NNNN.tar`."""
  from cnn_jax.data.sources import imagefolder, webdataset

  os.makedirs(out_root, exist_ok=True)
  for split in ("train", "val"):
    folder = imagefolder.ImageFolderSource(os.path.join(jpeg_root, split))
    samples = []
    for path, label in zip(folder.paths, folder.labels):
      with open(path, "rb") as f:
        key = os.path.relpath(path, jpeg_root).rsplit(".", 1)[0].replace(os.sep, "_")
        samples.append((key, f.read(), "jpg", str(int(label)).encode()))
    for s in range(0, len(samples), images_per_shard):
      webdataset.write_shard(os.path.join(out_root, f"{split}-{s // images_per_shard:04d}.tar"),
                             samples[s:s + images_per_shard])


def _format_config(config, fmt: str, root: str):
  """`config` reading the generated JPEGs under `root` as `fmt`."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if fmt == "imagefolder":
      config.data.update(source="imagefolder", data_dir=root, train_split="train",
                         eval_split="val")
    elif fmt == "tfrecord":
      config.data.update(source="tfds", name=BENCH_TFDS_NAME,
                         data_dir=os.path.join(root, "tfds"), train_split="train",
                         eval_split="val", index_dir=os.path.join(root, "index"))
    else:
      shards = sorted(os.listdir(os.path.join(root, "wds")))
      count = lambda split: sum(name.startswith(split) for name in shards)  # noqa: E731
      config.data.update(source="webdataset", data_dir=os.path.join(root, "wds"),
                         train_split=f"train-{{0000..{count('train') - 1:04d}}}.tar",
                         eval_split=f"val-{{0000..{count('val') - 1:04d}}}.tar",
                         index_dir=os.path.join(root, "index"))
  return config


def compare(config: ml_collections.ConfigDict, root: str, formats: list[str],
            variants: list[str], rounds: int, steps: int, warmup_steps: int
            ) -> dict[tuple[str, str], float]:
  """Median CPU-ms per image of every (format, variant), in alternating turns; prints ratios."""
  import statistics

  from cnn_jax.errors import UserError

  for fmt in formats:
    if fmt not in ("imagefolder", "tfrecord", "webdataset"):
      raise UserError(f"--formats: unknown {fmt!r}; known: imagefolder, tfrecord, webdataset")
  for variant in variants:
    if variant not in VARIANTS and variant != "config":
      raise UserError(f"--variants: unknown {variant!r}; known: {', '.join(VARIANTS)}")
  if "tfrecord" in formats and not os.path.isdir(os.path.join(root, "tfds")):
    write_tfrecord_set(root, os.path.join(root, "tfds"))
  if "webdataset" in formats and not os.path.isdir(os.path.join(root, "wds")):
    write_shards(root, os.path.join(root, "wds"))
  results: dict[tuple[str, str], list[tuple[float, float]]] = {}
  for _ in range(rounds):
    for fmt in formats:
      for variant in variants:
        cfg = _format_config(config, fmt, root)
        with cfg.unlocked():
          cfg.data.update(VARIANTS.get(variant, {}))
        print(f"[{fmt} / {variant}] ", end="")
        results.setdefault((fmt, variant), []).append(bench(cfg, steps, warmup_steps))
  medians = {key: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
             for key, runs in results.items()}
  print(f"medians over {rounds} rounds (CPU-ms ratios to {variants[0]} on the same source):")
  for (fmt, variant), (rate, cpu_ms) in medians.items():
    # CPU time is counted in clock ticks (10 ms): a very short run can measure none at all.
    fewer = f"x{medians[fmt, variants[0]][1] / cpu_ms:.2f}" if cpu_ms else "n/a"
    per_core = f"{1e3 / cpu_ms:6.0f}" if cpu_ms else "   n/a"
    print(f"  {fmt:12s} {variant:8s} {rate:8.1f} images/s  {cpu_ms:6.2f} CPU-ms/image  "
          f"{fewer} fewer CPU-ms  {per_core} images/s per "
          f"core  {2470 * cpu_ms / 1e3:4.1f} cores per A100 (2,470 images/s)", flush=True)
  return medians


def define_flags() -> None:
  cli.define_config_flag()
  flags.DEFINE_integer("steps", 20, "Measured training batches.")
  flags.DEFINE_integer("warmup_steps", 3, "Batches pulled before timing starts.")
  flags.DEFINE_integer("num_images", 512, "Generated JPEGs (imagefolder source).")
  flags.DEFINE_integer("num_classes", 8, "Classes of the generated JPEGs.")
  flags.DEFINE_string("jpeg_dir", "", "Where to write/reuse the generated JPEGs "
                      "(default: a temporary directory, removed at exit).")
  flags.DEFINE_list("formats", [], "Read the generated JPEGs as each of these "
                    "(imagefolder, tfrecord, webdataset), back to back.")
  flags.DEFINE_list("variants", [], "Decode paths to compare back to back "
                    f"({', '.join(VARIANTS)}; config = as the config says).")
  flags.DEFINE_integer("rounds", 1, "Alternating turns of every format x variant.")


def write_jpegs(root: str, num_images: int, num_classes: int, seed: int = 0) -> None:
  """`root/{train,val}/class_k/*.jpg`: ImageNet-like sizes (mostly 500x375 / 375x500)."""
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(seed)
  for split, count in (("train", num_images), ("val", max(num_classes, num_images // 8))):
    for k in range(num_classes):
      os.makedirs(os.path.join(root, split, f"class_{k:03d}"), exist_ok=True)
    for i in range(count):
      # ImageNet: most images are 500x375 or 375x500, the mean is about 400x350.
      w, h = (500, 375) if rng.random() < 0.5 else (375, 500)
      if rng.random() < 0.3:
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
      small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
      img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
      noisy = np.asarray(img, np.int16) + rng.integers(-20, 21, (h, w, 3), dtype=np.int16)
      img = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
      img.save(os.path.join(root, split, f"class_{i % num_classes:03d}", f"{i:06d}.jpg"),
               quality=90)


def _cpu_seconds() -> float:
  """User + system CPU time of this process and its live children (grain workers)."""
  import psutil

  procs = [psutil.Process()]
  procs += procs[0].children(recursive=True)
  total = 0.0
  for proc in procs:
    try:
      t = proc.cpu_times()
      total += t.user + t.system
    except psutil.NoSuchProcess:
      pass
  return total


def bench(config: ml_collections.ConfigDict, steps: int, warmup_steps: int) -> tuple[float, float]:
  """(images/s, CPU-ms per image over all processes) of `steps` training batches."""
  from cnn_jax import data

  train, _, info = data.create_datasets(config)
  it = train.iterate(0)
  for _ in range(warmup_steps):
    next(it)
  cpu_start = _cpu_seconds()
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(it)
  elapsed = time.perf_counter() - start
  images = steps * batch["image"].shape[0]
  rate = images / elapsed
  cpu = _cpu_seconds() - cpu_start
  if hasattr(it, "close"):  # Stops grain's worker processes and frees their shared memory.
    it.close()
  print(f"{info.name}: {rate:.1f} images/s, {1e3 * cpu / images:.2f} CPU-ms/image over all "
        f"processes ({steps} batches of {batch['image'].shape}, {elapsed:.2f} s; "
        f"source={config.data.source}, augment={config.data.augment}, "
        f"randaugment={config.data.randaugment or 'off'}, "
        f"random_erasing={config.data.random_erasing}, num_workers={config.data.num_workers}, "
        f"num_threads={config.data.num_threads}, decoder={config.data.decoder}, "
        f"reduced_decode={config.data.reduced_decode}, "
        f"normalise_on_device={config.data.normalise_on_device}, "
        f"train_resampling={config.data.train_resampling}, {os.cpu_count()} CPUs)",
        flush=True)
  return rate, 1e3 * cpu / images


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  config = cli.config_value("config", "configs/data_examples/imagenet_bench.py")
  cleanup = None
  try:
    comparing = bool(FLAGS.formats or FLAGS.variants)
    if comparing or (config.data.source == "imagefolder" and not config.data.data_dir):
      root = FLAGS.jpeg_dir or tempfile.mkdtemp(prefix="cnn_jax_bench_")
      cleanup = None if FLAGS.jpeg_dir else root
      if not os.path.isdir(os.path.join(root, "train")):
        t = time.perf_counter()
        write_jpegs(root, FLAGS.num_images, FLAGS.num_classes)
        print(f"wrote {FLAGS.num_images} train JPEGs to {root} in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
      with config.unlocked():
        config.data.data_dir = root
        config.data.train_split, config.data.eval_split = "train", "val"
    if comparing:
      compare(config, config.data.data_dir, FLAGS.formats or ["imagefolder"],
              FLAGS.variants or ["config"], FLAGS.rounds, FLAGS.steps, FLAGS.warmup_steps)
    else:
      bench(config, FLAGS.steps, FLAGS.warmup_steps)
  finally:
    if cleanup:
      shutil.rmtree(cleanup, ignore_errors=True)


if __name__ == "__main__":
  # The input pipeline alone: no accelerator to claim.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  cli.run(main, define_flags)
