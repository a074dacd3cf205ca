"""The input pipeline alone, in images/s: python -m cnn_jax.data_bench --config CONFIG

  python -m cnn_jax.data_bench --config configs/data_examples/imagenet_bench.py

With `data.source = "imagefolder"` and an empty `data.data_dir`, it first writes
`--num_images` JPEGs of ImageNet's typical size (about 500x375, quality 90, smooth content
plus noise, ~100-150 kB each) into a temporary ImageFolder (or `--jpeg_dir`, reused if it
exists), so the figure covers JPEG decoding as well as augmentation. It then pulls
`--warmup_steps` + `--steps` training batches through `train.iterate(0)` and prints the
images/s of the measured steps. Any config field can be overridden (--config.data.num_workers=4).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import flags

from cnn_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag()
  flags.DEFINE_integer("steps", 20, "Measured training batches.")
  flags.DEFINE_integer("warmup_steps", 3, "Batches pulled before timing starts.")
  flags.DEFINE_integer("num_images", 512, "Generated JPEGs (imagefolder source).")
  flags.DEFINE_integer("num_classes", 8, "Classes of the generated JPEGs.")
  flags.DEFINE_string("jpeg_dir", "", "Where to write/reuse the generated JPEGs "
                      "(default: a temporary directory, removed at exit).")


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


def bench(config, steps: int, warmup_steps: int) -> float:
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
        f"processes ({steps} batches of {batch['image'].shape}, {elapsed:.2f} s; source={config.data.source}, augment={config.data.augment}, "
        f"randaugment={config.data.randaugment or 'off'}, "
        f"random_erasing={config.data.random_erasing}, num_workers={config.data.num_workers}, "
        f"num_threads={config.data.num_threads}, {os.cpu_count()} CPUs)", flush=True)
  return rate


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  config = cli.config_value("config", "configs/data_examples/imagenet_bench.py")
  cleanup = None
  try:
    if config.data.source == "imagefolder" and not config.data.data_dir:
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
    bench(config, FLAGS.steps, FLAGS.warmup_steps)
  finally:
    if cleanup:
      shutil.rmtree(cleanup, ignore_errors=True)


if __name__ == "__main__":
  # The input pipeline alone: no accelerator to claim.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  cli.run(main, define_flags)
