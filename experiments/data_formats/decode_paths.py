"""decode + RandomResizedCrop CPU-ms per image for PIL / simplejpeg and reduced-decode thresholds.

  python experiments/data_formats/decode_paths.py ROOT   (ROOT: data_bench --jpeg_dir)

The first 128 of ROOT's train/ JPEGs through `transforms.TrainTransform` of the ImageNet bench
config without RandAugment, erasing or flips, each decode path in five alternating rounds
(process CPU time, medians); then how far each reduced-size decode's crop is from the
full-size decode's on the same draws (mean absolute difference, 0..255).
"""

import glob
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from cnn_jax import cli  # noqa: E402
from cnn_jax.data import transforms  # noqa: E402
from cnn_jax.data.sources.images import EncodedImage  # noqa: E402

BENCH_CONFIG = os.path.join(REPO_ROOT, "configs", "data_examples", "imagenet_bench.py")


def train_transform(reduced_decode: float) -> transforms.TrainTransform:
  config = cli.load_config_file(BENCH_CONFIG)
  config.data.randaugment = ""
  config.data.random_erasing = 0.0
  config.data.reduced_decode = reduced_decode
  config.data.normalise_on_device = True
  config.data.hflip_prob = 0.0
  return transforms.TrainTransform(config.data)


def main() -> None:
  files = sorted(glob.glob(f"{sys.argv[1]}/train/*/*.jpg"))[:128]
  if not files:
    sys.exit(f"error: no JPEGs under {sys.argv[1]}/train (a data_bench --jpeg_dir)")
  blobs = []
  for path in files:
    with open(path, "rb") as f:
      blobs.append(f.read())
  variants = {  # name: (transform, decoder)
      "pil_full": (train_transform(0.0), "pil"),
      "sj_full": (train_transform(0.0), "simplejpeg"),
      "sj_rd2": (train_transform(2.0), "simplejpeg"),
      "sj_rd1.5": (train_transform(1.5), "simplejpeg"),
      "sj_rd1": (train_transform(1.0), "simplejpeg"),
      "pil_rd1": (train_transform(1.0), "pil")}
  times = {name: [] for name in variants}
  for _ in range(5):
    for name, (transform, decoder) in variants.items():
      start = time.process_time()
      for i, blob in enumerate(blobs):
        transform(EncodedImage(blob, 3, decoder), np.random.default_rng(i))
      times[name].append(1e3 * (time.process_time() - start) / len(blobs))
  for name in variants:
    print(name, "decode+RRC CPU-ms/img", round(float(np.median(times[name])), 2))
  full = variants["sj_full"][0]
  for name in ("sj_rd2", "sj_rd1.5", "sj_rd1"):
    reduced = variants[name][0]
    diffs = [np.abs(full(EncodedImage(blob, 3), np.random.default_rng(i))[0].astype(float)
                    - reduced(EncodedImage(blob, 3), np.random.default_rng(i))[0]).mean()
             for i, blob in enumerate(blobs[:64])]
    print(name, "mean |diff| vs full decode, in 0..255:", round(float(np.mean(diffs)), 2))


if __name__ == "__main__":
  main()
