"""Effective receptive field (Luo, Li, Urtasun & Zemel 2016), summarised as in RepLKNet.

  python -m cnn_jax.erf --model resnet50 --image_size 224 --num_images 8 --out runs/erf_r50
  python -m cnn_jax.erf --model resnet20 --checkpoint runs/my_run --inputs data

ERF = d(sum of ReLU of the centre unit of the last feature map) / d(input image), ReLU'd, summed
over input channels and averaged over images. The map is reported as log10(1 + ERF) normalised to
a maximum of 1, and summarised by the area ratio (side^2 / image area) of the smallest centred
square holding 20/30/50/99% of the map's total (RepLKNet, Ding et al. 2022, its analyze_erf).

The centre unit is the feature map's (H // 2, W // 2) position over all channels; a ViT's
patch tokens (class token dropped) are laid out on their square grid first. The model runs in
eval mode (BatchNorm uses its running statistics), so images do not interact and one batched
gradient gives the per-image gradients.

Inputs: "noise" (standard normal images, what a randomly initialised model's ERF is usually
measured on), or "data" (the eval split of the checkpoint's config, resized to --image_size).
Writes erf.png (heat map), erf.npy (the raw map) and erf.json (the ratios) to --out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

from cnn_jax import cli
from cnn_jax.errors import UserError

RATIO_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("model", None, "Registered model name (ignored with --checkpoint, which "
                      "names its own).")
  flags.DEFINE_integer("image_size", None, "Input side in pixels (default: the run's "
                       "data.image_size with --checkpoint, else 224).")
  flags.DEFINE_integer("num_images", 8, "Images to average the ERF over.")
  flags.DEFINE_integer("batch_size", 4, "Images per gradient computation.")
  flags.DEFINE_string("checkpoint", None, "A training workdir: use its config's model and its "
                      "latest checkpoint's weights (default: random init).")
  flags.DEFINE_enum("inputs", "noise", ["noise", "data"], "What the images are.")
  flags.DEFINE_integer("in_channels", None, "Model input channels (default: the model's own; "
                       "the run's with --checkpoint).")
  flags.DEFINE_integer("seed", 0, "Seed of the initialisation and of the noise images.")
  flags.DEFINE_string("out", None, "Output directory (default: runs/erf/MODEL_SIZE).")


def feature_map(model: Any, images: Any) -> Any:
  """The model's last feature map as (N, H, W, C): forward_features, with a ViT's patch tokens
  put back on their grid."""
  if not hasattr(model, "forward_features"):
    raise UserError(f"{type(model).__name__} has no forward_features(x); the ERF needs the last "
                    "feature map")
  features = model.forward_features(images)
  if features.ndim == 3:  # (N, 1 + g*g, D) tokens, class token first.
    tokens = features[:, 1:]
    grid = int(round(tokens.shape[1] ** 0.5))
    if grid * grid != tokens.shape[1]:
      raise UserError(f"cannot lay {tokens.shape[1]} tokens out on a square grid")
    features = tokens.reshape(tokens.shape[0], grid, grid, tokens.shape[-1])
  if features.ndim != 4:
    raise UserError(f"forward_features returned shape {tuple(features.shape)}, not NHWC")
  return features


def erf_map(model: Any, images: np.ndarray, batch_size: int = 4) -> np.ndarray:
  """The raw ERF (H, W): mean over images of sum_c ReLU(d centre / d input)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  model.eval()
  graphdef, state = nnx.split(model)

  def centre(x, state):
    features = feature_map(nnx.merge(graphdef, state), x)
    h, w = features.shape[1:3]
    return jnp.sum(jax.nn.relu(features[:, h // 2, w // 2, :]))

  grad_fn = jax.jit(jax.grad(centre))
  total = np.zeros(images.shape[1:3], np.float64)
  for start in range(0, len(images), batch_size):
    grads = np.asarray(grad_fn(jnp.asarray(images[start:start + batch_size]), state),
                       np.float64)
    total += np.maximum(grads, 0.0).sum(axis=(0, 3))
  return total / len(images)


def normalised_log_map(erf: np.ndarray) -> np.ndarray:
  """log10(1 + ERF) scaled to a maximum of 1 (all zeros stay zeros)."""
  log_map = np.log10(1.0 + np.asarray(erf, np.float64))
  peak = log_map.max()
  return log_map / peak if peak > 0 else log_map


def area_ratios(log_map: np.ndarray, thresholds: Sequence[float] = RATIO_THRESHOLDS
                ) -> dict[str, float]:
  """For each threshold t: side^2 / (H * W) of the smallest square centred on (H//2, W//2)
  holding at least t of the map's total (1.0 when only the whole image does)."""
  h, w = log_map.shape
  total = log_map.sum()
  ci, cj = h // 2, w // 2
  ratios = {}
  for t in thresholds:
    ratio = 1.0
    if total > 0:
      for radius in range(max(h, w)):
        window = log_map[max(ci - radius, 0):ci + radius + 1, max(cj - radius, 0):cj + radius + 1]
        if window.sum() >= t * total:
          ratio = min(window.shape[0] * window.shape[1] / (h * w), 1.0)
          break
    ratios[f"{t:g}"] = ratio
  return ratios


def support_side(erf: np.ndarray) -> int:
  """Side of the smallest centred square holding every non-zero ERF pixel (0 if none)."""
  rows, cols = np.nonzero(erf)
  if not len(rows):
    return 0
  h, w = erf.shape
  radius = max(np.abs(rows - h // 2).max(), np.abs(cols - w // 2).max())
  return int(2 * radius + 1)


def plot_erf(log_map: np.ndarray, path: str, title: str, ratios: dict[str, float]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 4.4))
  image = ax.imshow(log_map, cmap="RdYlGn", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, fraction=0.046)
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("  ".join(f"{float(k) * 100:g}%: {v:.3f}" for k, v in ratios.items()),
                fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- CLI

def _images(num: int, size: int, channels: int, seed: int, config: Any | None) -> np.ndarray:
  if config is None:
    return np.random.default_rng(seed).standard_normal((num, size, size, channels),
                                                       dtype=np.float32)
  import jax
  import jax.numpy as jnp

  from cnn_jax import data

  _, eval_batches, _ = data.create_datasets(config)
  images = []
  for batch in eval_batches:
    images.append(batch["image"][batch["mask"] > 0])
    if sum(len(b) for b in images) >= num:
      break
  images = np.concatenate(images)[:num]
  if images.shape[1] != size:
    images = np.asarray(jax.image.resize(jnp.asarray(images), (len(images), size, size,
                                                               images.shape[-1]), "bilinear"))
  return images.astype(np.float32)


def main(argv: Sequence[str]) -> None:
  cli.no_extra_args(argv)
  if FLAGS.num_images < 1 or FLAGS.batch_size < 1 or (FLAGS.image_size is not None and
                                                       FLAGS.image_size < 1):
    raise UserError("--num_images, --batch_size and --image_size must be >= 1")
  if FLAGS.inputs == "data" and not FLAGS.checkpoint:
    raise UserError("--inputs=data needs --checkpoint (the data comes from its config)")
  if not FLAGS.checkpoint and not FLAGS.model:
    raise UserError("give --model NAME or --checkpoint WORKDIR")
  from flax import nnx

  from cnn_jax.models import create_model

  if FLAGS.checkpoint:
    from cnn_jax import train

    model, config = train.load_run(FLAGS.checkpoint, best=False)
    name = config.model.name
    # The run's input: a model trained at 32 px on one channel takes no 224 px RGB image.
    image_size = FLAGS.image_size or config.data.image_size
    channels = FLAGS.in_channels or config.model.get("in_channels") or config.data.channels
  else:
    config, name, image_size = None, FLAGS.model, FLAGS.image_size or 224
    kwargs = {} if FLAGS.in_channels is None else {"in_channels": FLAGS.in_channels}
    try:
      model = create_model(name, rngs=nnx.Rngs(FLAGS.seed), image_size=image_size, **kwargs)
    except UserError as e:
      if "image_size" not in str(e):
        raise
      model = create_model(name, rngs=nnx.Rngs(FLAGS.seed), **kwargs)
    channels = FLAGS.in_channels or getattr(model, "in_channels", None) or 3
  images = _images(FLAGS.num_images, image_size, channels, FLAGS.seed,
                   config if FLAGS.inputs == "data" else None)
  try:
    erf = erf_map(model, images, FLAGS.batch_size)
  except (ValueError, TypeError) as e:
    raise UserError(f"{name} cannot take {images.shape[1]}x{images.shape[2]}x"
                    f"{images.shape[3]} inputs: {str(e).splitlines()[0]}") from None
  log_map = normalised_log_map(erf)
  ratios = area_ratios(log_map)
  out = FLAGS.out or os.path.join("runs", "erf", f"{name}_{image_size}")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {out}: {e.strerror or e}") from None
  weights = f"checkpoint {FLAGS.checkpoint}" if FLAGS.checkpoint else "random init"
  title = (f"ERF {name} @{image_size}, {weights}, "
           f"{FLAGS.num_images} {FLAGS.inputs} images")
  plot_erf(log_map, os.path.join(out, "erf.png"), title, ratios)
  np.save(os.path.join(out, "erf.npy"), erf)
  result = {"model": name, "image_size": image_size, "num_images": FLAGS.num_images,
            "inputs": FLAGS.inputs, "weights": weights, "area_ratios": ratios,
            "support_side": support_side(erf)}
  with open(os.path.join(out, "erf.json"), "w") as f:
    json.dump(result, f, indent=2)
  print("area ratio of the centred square holding " + ", ".join(
      f"{float(k) * 100:g}%: {v:.4f}" for k, v in ratios.items()))
  print(f"wrote {out}/erf.png, erf.npy, erf.json")


if __name__ == "__main__":
  cli.run(main, define_flags)
