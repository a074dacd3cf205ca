"""decode + RandomResizedCrop CPU-ms per image for PIL / simplejpeg and reduced-decode thresholds.

  python experiments/data_formats/decode_paths.py ROOT   (ROOT: data_bench --jpeg_dir)
"""
import glob, time, numpy as np
from PIL import Image
from cnn_jax.data import transforms
from cnn_jax.data.sources.images import EncodedImage
import importlib.util
spec = importlib.util.spec_from_file_location("c", "configs/data_examples/imagenet_bench.py"); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
import sys
# ROOT: a data_bench --jpeg_dir (its train/ JPEGs).
files = sorted(glob.glob(f"{sys.argv[1]}/train/*/*.jpg"))[:128]
blobs = [open(f, "rb").read() for f in files]
def mk(dec, rd, ra=""):
  cfg = m.get_config(); cfg.data.randaugment = ra; cfg.data.random_erasing = 0.0; cfg.data.reduced_decode = rd; cfg.data.normalise_on_device = True; cfg.data.hflip_prob = 0
  return transforms.TrainTransform(cfg.data), dec
V = {"pil_full": mk("pil", 0.0), "sj_full": mk("simplejpeg", 0.0), "sj_rd2": mk("simplejpeg", 2.0), "sj_rd1.5": mk("simplejpeg", 1.5), "sj_rd1": mk("simplejpeg", 1.0), "pil_rd1": mk("pil", 1.0)}
res = {k: [] for k in V}
for r in range(5):
  for k, (tt, dec) in V.items():
    s = time.process_time()
    for i, b in enumerate(blobs): tt(EncodedImage(b, 3, dec), np.random.default_rng(i))
    res[k].append(1e3 * (time.process_time() - s) / len(blobs))
for k in V: print(k, "decode+RRC CPU-ms/img", round(float(np.median(res[k])), 2))
ref = V["sj_full"][0]
for k in ("sj_rd2", "sj_rd1.5", "sj_rd1"):
  d = [np.abs(ref(EncodedImage(b, 3), np.random.default_rng(i))[0].astype(float) - V[k][0](EncodedImage(b, 3), np.random.default_rng(i))[0]).mean() for i, b in enumerate(blobs[:64])]
  print(k, "mean |diff| vs full decode, in 0..255:", round(float(np.mean(d)), 2))
