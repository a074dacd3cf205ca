"""Where the CPU time of one ImageNet train image goes, stage by stage, for the three decode
paths of data_bench's --variants, and how close OpenCV's crop resize is to Pillow's bicubic.

  python experiments/data_formats/train_stages.py ROOT [IMAGES [ROUNDS]]
  (ROOT: a data_bench --jpeg_dir)

Single thread, thread CPU time, the stages of `transforms.TrainTransform` called one by one on
the same draws (same generator per image) as the transform itself makes them; the variants in
alternating rounds, medians per stage.
"""

import glob
import math
import os
import sys
import time

import numpy as np
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from cnn_jax import cli  # noqa: E402
from cnn_jax.data import transforms  # noqa: E402
from cnn_jax.data.sources.images import EncodedImage  # noqa: E402
# The same decode-path settings as --variants.
from cnn_jax.data_bench import VARIANTS  # noqa: E402

BENCH_CONFIG = os.path.join(REPO_ROOT, "configs", "data_examples", "imagenet_bench.py")


def stages(path: str, index: int, t: transforms.TrainTransform, decoder: str, times: dict):
  clock = time.thread_time
  rng = np.random.default_rng([0, index, 7])
  marks = [("read + header", clock())]
  img = EncodedImage(path, 3, decoder)
  marks.append(("decode", clock()))
  width, height = img.size
  top, left, h, w = transforms.random_resized_crop_box(height, width, t.scale, t.ratio, rng)
  min_size = None
  if t.reduced_decode and min(h, w) >= t.reduced_decode * t.size:
    factor = min(h, w) / t.size
    min_size = (math.ceil(width / factor), math.ceil(height / factor))
  img = img.decode_array(min_size) if t.opencv else img.decode(min_size)
  marks.append(("crop + resize", clock()))
  if t.opencv:
    fx, fy = img.shape[1] / width, img.shape[0] / height
    x0, y0 = round(left * fx), round(top * fy)
    x1, y1 = max(x0 + 1, round((left + w) * fx)), max(y0 + 1, round((top + h) * fy))
    img = transforms.opencv_resize(img[y0:y1, x0:x1], t.size, t.resample)
  else:
    fx, fy = img.width / width, img.height / height
    img = img.resize((t.size, t.size), t.resample,
                     box=(left * fx, top * fy, (left + w) * fx, (top + h) * fy))
  marks.append(("flip", clock()))
  if rng.random() < t.hflip:
    img = (transforms.opencv_flip(img) if t.opencv
           else img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
  marks.append(("RandAugment", clock()))
  img = t.randaugment(img, rng)
  marks.append(("to array", clock()))
  image = img if t.opencv else transforms.to_array(img)
  marks.append(("erasing box / host normalise + erase", clock()))
  if t.normalise_on_device:
    transforms.random_erasing_box(image.shape, t.erasing, rng)
  else:
    image = (image.astype(np.float32) / 255.0 - t.mean) / t.std
    transforms.random_erasing(image, t.erasing, rng)
  marks.append(("end", clock()))
  for (name, start), (_, end) in zip(marks, marks[1:]):
    times[name] = times.get(name, 0.0) + end - start


def resize_closeness(paths: list[str]) -> None:
  """Mean |difference| (0..255) of OpenCV resizes to Pillow's bicubic, on crops that shrink."""
  import cv2

  cv2.setNumThreads(1)
  kernels = {
      "INTER_AREA": lambda c: cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA),
      "INTER_CUBIC": lambda c: cv2.resize(c, (224, 224), interpolation=cv2.INTER_CUBIC),
      "Gaussian + INTER_CUBIC (opencv path)": lambda c: transforms.opencv_resize(
          c, 224, Image.Resampling.BICUBIC),
  }
  diffs, times = {k: [] for k in kernels}, dict.fromkeys(kernels, 0.0)
  for i, path in enumerate(paths):
    a = EncodedImage(path, 3).decode_array()
    top, left, h, w = transforms.random_resized_crop_box(a.shape[0], a.shape[1], (0.08, 1),
                                                         (3 / 4, 4 / 3), np.random.default_rng(i))
    if h < 224 or w < 224:
      continue
    want = np.asarray(Image.fromarray(a).resize((224, 224), Image.Resampling.BICUBIC,
                                                box=(left, top, left + w, top + h)), np.int16)
    for name, kernel in kernels.items():
      start = time.thread_time()
      got = kernel(a[top:top + h, left:left + w])
      times[name] += time.thread_time() - start
      diffs[name].append(np.abs(got - want).mean())
  print(f"\nresize of the {len(diffs['INTER_AREA'])} crops that shrink, vs Pillow bicubic:")
  for name in kernels:
    print(f"  {name:38s} mean |diff| {np.mean(diffs[name]):5.2f}   "
          f"{1e3 * times[name] / len(diffs[name]):.3f} ms")


def main() -> None:
  paths = sorted(glob.glob(f"{sys.argv[1]}/train/*/*.jpg"))
  paths = paths[:int(sys.argv[2]) if len(sys.argv) > 2 else 256]
  rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
  chains = {}
  for name, fields in VARIANTS.items():
    config = cli.load_config_file(BENCH_CONFIG)
    config.data.update(fields)
    chains[name] = (transforms.TrainTransform(config.data), fields["decoder"])
  runs = {name: [] for name in VARIANTS}
  for _ in range(rounds):
    for name, (t, decoder) in chains.items():
      times = {}
      for i, path in enumerate(paths):
        stages(path, i, t, decoder, times)
      runs[name].append(times)
  names = list(runs["before"][0])
  results = {name: {stage: float(np.median([r[stage] for r in rs])) for stage in names}
             for name, rs in runs.items()}
  print(f"CPU-ms per image, {len(paths)} images, medians of {rounds} rounds:")
  print(f"  {'':38s}" + "".join(f"{v:>9s}" for v in results))
  for stage in names:
    print(f"  {stage:38s}" + "".join(f"{1e3 * r[stage] / len(paths):9.3f}"
                                     for r in results.values()))
  print(f"  {'total':38s}" + "".join(f"{1e3 * sum(r.values()) / len(paths):9.3f}"
                                     for r in results.values()))
  resize_closeness(paths)


if __name__ == "__main__":
  main()
