"""Top-k classes of your images with pretrained weights, and where the model looked (Grad-CAM).

    python -m cnn_jax.predict --model convnextv2_tiny --weights PATH IMAGE_OR_DIR ...

PATH is what `create_model(name, pretrained=PATH)` takes (a `python -m cnn_jax.convert`
directory, or a timm / torchvision / official `.safetensors` / `.pth` file), or the WORKDIR of
a finished cnn_jax training run, whose config.json gives the model, the eval transform and the
class names (then --model may be left out). Directories are searched recursively for images.

Preprocessing is the eval transform of the weights: for released weights the family's timm
settings from configs/eval_imagenet.py (resize the shorter side to image_size / crop_pct,
centre crop, interpolation, mean / std), for a training run its own `config.data`; a run on an
embedded set (`make train`'s MNIST, the 8x8 digits) takes each image whole into the set's frame
(grayscale, resized to 28 or 8 px, padded or repeated as the set's own) with the set's
statistics. Batches are split over all devices. Output: per image the top-k classes with
probabilities, or with --json one JSON object per line (keys in `RESULT_KEYS`, each prediction
with `PREDICTION_KEYS`). --out DIR also writes DIR/predictions.jsonl; --cam writes a Grad-CAM
overlay per image to DIR/cam/<name>.png at the image's own size: the gradient of the top-1
logit with respect to the last stage's feature map, averaged over space per channel, weights
the channels of that map (Selvaraju et al. 2017); regions outside the centre crop the model
saw are darkened. An image that cannot be read is skipped with a warning and counted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from cnn_jax import hostenv

if __name__ == "__main__":
  # cli.run's malloc-settings re-run starts the process afresh: before the imports below, so that
  # JAX and the models are not imported twice (seconds of CPU per call).
  hostenv.reexec_with_malloc_tunables()

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from jax.sharding import Mesh
from PIL import Image

from cnn_jax import cli, metrics, parallel, train
from cnn_jax.data import class_names, transforms
from cnn_jax.data.sources import embedded
from cnn_jax.data.sources.imagefolder import IMAGE_EXTENSIONS
from cnn_jax.data.sources.images import CorruptImage, decode_image
from cnn_jax.errors import UserError
from cnn_jax.models import create_model, get_constructor, layers

FLAGS = flags.FLAGS
EVAL_CONFIG = "configs/eval_imagenet.py"
RESULT_KEYS = ("image", "width", "height", "predictions", "cam")
PREDICTION_KEYS = ("rank", "index", "class_id", "label", "probability")
PARAMS_CHOICES = ("auto", "trained", "ema")


def define_flags() -> None:
  flags.DEFINE_string("model", None, "Registered model name, e.g. convnextv2_tiny (optional "
                      "with --weights WORKDIR of a training run).")
  flags.DEFINE_string("weights", None, "A cnn_jax.convert directory, a .safetensors/.pth "
                      "checkpoint, or the WORKDIR of a cnn_jax training run.")
  flags.DEFINE_enum("params", "auto", PARAMS_CHOICES, "For --weights WORKDIR of a run that "
                    "kept an EMA: its trained parameters or their EMA. auto: the EMA when the "
                    "run picked its best checkpoint by an ema_ metric, else the trained ones.")
  flags.DEFINE_integer("top_k", 5, "How many classes to print per image.")
  flags.DEFINE_bool("json", False, "One JSON object per image on stdout instead of text.")
  flags.DEFINE_bool("cam", False, "Write a Grad-CAM overlay PNG per image to --out/cam/.")
  flags.DEFINE_string("out", None, "Directory for predictions.jsonl (and cam/ with --cam).")
  flags.DEFINE_integer("batch_size", 32, "Images per batch (rounded up to the device count).")
  flags.DEFINE_integer("image_size", 0, "Crop size; 0 = the weights' own (224 for ImageNet).")
  flags.DEFINE_string("class_names", None, "File with one class name per line (default: "
                      "ImageNet's for 1000 classes, a run's own, else the indices).")


# ---------------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Loaded:
  """A model in eval mode with the transform and names its weights were made with."""
  name: str
  model: nnx.Module
  data_config: ml_collections.ConfigDict
  classes: class_names.ClassNames


def is_run_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
      os.path.isdir(os.path.join(path, d)) for d in ("checkpoints", "checkpoints_best"))


def eval_data_config(model_name: str) -> ml_collections.ConfigDict:
  """The eval transform of `model_name`'s released weights (configs/eval_imagenet.py)."""
  return cli.load_config_file(EVAL_CONFIG, model_name).data


@dataclasses.dataclass(frozen=True)
class ImageInput:
  """How an image file becomes the model's input, as the weights' own eval images were made."""
  transform: transforms.EvalTransform | transforms.ArrayFileTransform
  channels: int
  image_size: int


def image_input(data_config: ml_collections.ConfigDict) -> ImageInput:
  """The eval transform of `data_config`. A run on an embedded set (MNIST, the 8x8 digits, the
  long-range canvases) saw float arrays, not files: a file goes into the set's frame and is
  normalised with the set's statistics, which the set gives again from the run's config.
  Otherwise: resize and centre crop, the config's channels and mean / std."""
  if data_config.source == "embedded":
    arrays = embedded.load_arrays(data_config)
    layout = embedded.file_layout(data_config)
    transform = transforms.ArrayFileTransform(
        layout, transforms.interpolation(data_config.interpolation), arrays.mean, arrays.std)
    return ImageInput(transform, arrays.train.images.shape[-1], layout.size)
  return ImageInput(transforms.EvalTransform(data_config), data_config.channels,
                    data_config.image_size)


def uses_ema(config: ml_collections.ConfigDict, params: str) -> bool:
  """Whether `params` (PARAMS_CHOICES) means a run's EMA parameters. "auto" follows the run's
  own choice: its best checkpoint is best by the metric it named, so when that is an ema_
  metric the EMA is the model it judged best (timm ranks checkpoints the same way)."""
  if params not in PARAMS_CHOICES:
    raise UserError(f"params must be one of {', '.join(PARAMS_CHOICES)} (got {params!r})")
  if params == "auto":
    best = config.get("checkpoint", {}).get("best_metric", "") or ""
    return bool(config.get("ema_decay", 0.0)) and best.startswith("ema_")
  return params == "ema"


def load_run(workdir: str, model_name: str | None, params: str = "auto") -> Loaded:
  """The model of a cnn_jax training run with its checkpoint's weights (best, else latest):
  the trained parameters or their EMA, as `uses_ema` reads `params`."""
  config = train.read_run_config(workdir)
  name = config.model.name
  if model_name and model_name != name:
    raise UserError(f"--model {model_name} but the run in {workdir} trained {name}; leave "
                    "--model out")
  model, config = train.load_run(workdir, ema=uses_ema(config, params))
  num_classes = int(getattr(model, "num_classes", 0) or config.model.get("num_classes", 0))
  return Loaded(name, model, config.data, class_names.of_run(config, num_classes))


def load(model_name: str | None, weights: str, params: str = "auto") -> Loaded:
  """The model for `--model` / `--weights` (/ `--params` for a run's WORKDIR); UserError for
  anything the user must fix."""
  path = os.path.expanduser(weights)
  if not os.path.exists(path):
    raise UserError(f"--weights {weights} does not exist")
  if os.path.isdir(path) and is_run_workdir(path):
    return load_run(path, model_name, params)
  if params == "ema":
    raise UserError("--params=ema needs --weights WORKDIR of a training run that kept an EMA")
  if not model_name:
    raise UserError("--model is required unless --weights is a training run's WORKDIR")
  get_constructor(model_name)  # An unknown name fails before any weights are read.
  data_config = eval_data_config(model_name)
  model = create_model(model_name, pretrained=path)
  num_classes = int(getattr(model, "num_classes", 0) or 0)
  return Loaded(model_name, model, data_config, class_names.for_classes(num_classes))


# ----------------------------------------------------------------------------------- inputs


def find_images(inputs: Sequence[str]) -> list[str]:
  """Files as given, directories searched recursively (sorted) for image files."""
  found = []
  for item in inputs:
    if os.path.isdir(item):
      files = sorted(
          os.path.join(root, name) for root, dirs, names in os.walk(item)
          for name in names if name.lower().endswith(IMAGE_EXTENSIONS)
          and not name.startswith("."))
      if not files:
        raise UserError(f"directory {item} holds no images "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
      found += files
    elif os.path.isfile(item):
      found.append(item)
    else:
      raise UserError(f"{item} does not exist")
  return found


@dataclasses.dataclass
class Decoded:
  path: str
  image: np.ndarray | None       # the normalised crop the model sees
  size: tuple[int, int] = (0, 0)  # (width, height) of the file's image
  original: Image.Image | None = None
  error: str = ""


def decode(path: str, transform: transforms.EvalTransform | transforms.ArrayFileTransform,
           channels: int, keep_original: bool) -> Decoded:
  try:
    img = decode_image(path, channels)
  except CorruptImage as e:
    reason = (str(e).splitlines() or ["unreadable"])[0].removeprefix(f"{path}: ")
    return Decoded(path, None, error=reason)
  return Decoded(path, transform(img), img.size, img if keep_original else None)


# -------------------------------------------------------------------------------- predictor


def _features_and_logits(model: nnx.Module, x: jax.Array, delta: jax.Array | None
                         ) -> tuple[jax.Array, jax.Array]:
  """(last-stage feature map, logits) in one pass, with `delta` added to the feature map.

  The models' `__call__` is forward_features followed by a family-specific head (pooling,
  norm, MLP); routing the call through a copy of the model whose forward_features adds
  `delta` gives d logits / d features for every family without restating their heads. The
  copy is the throwaway module `nnx.merge` made inside the traced function."""
  original = model.forward_features
  captured = []

  def forward_features(*args, **kwargs):
    features = original(*args, **kwargs)
    captured.append(features)
    return features if delta is None else features + delta

  object.__setattr__(model, "forward_features", forward_features)
  try:
    logits = model(x)
  finally:
    object.__delattr__(model, "forward_features")
  return captured[0], logits


class Predictor:
  """Jitted top-k (and Grad-CAM) of a loaded model, batches split over every device."""

  def __init__(self, loaded: Loaded, *, top_k: int, cam: bool, mesh: Mesh | None = None):
    self.loaded = loaded
    self.input = image_input(loaded.data_config)
    num_classes = len(loaded.classes)
    if not 1 <= top_k:
      raise UserError(f"--top_k={top_k} must be at least 1")
    self.top_k = min(top_k, num_classes)
    self.mesh = mesh or Mesh(np.asarray(jax.devices()), (parallel.DATA_AXIS,))
    self.graphdef, state = nnx.split(loaded.model)
    self.state = jax.device_put(state, parallel.replicated(self.mesh))
    batch = parallel.batch_sharding(self.mesh)
    replicated = parallel.replicated(self.mesh)
    graphdef, k = self.graphdef, self.top_k

    def top(state, x):
      logits = nnx.merge(graphdef, state)(x)
      return jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), k)

    self._top = jax.jit(top, in_shardings=(replicated, batch), out_shardings=replicated,
                        compiler_options=hostenv.forward_compiler_options(loaded.model))
    self._check_input()
    self.cam = cam
    if cam:
      self._check_cam()

      def grad_cam(state, x, classes):
        model = nnx.merge(graphdef, state)
        shape = jax.eval_shape(lambda: _features_and_logits(model, x, None)[0])

        def chosen_logit(delta):
          features, logits = _features_and_logits(model, x, delta)
          return jnp.take_along_axis(logits, classes[:, None], axis=1).sum(), features

        grads, features = jax.grad(chosen_logit, has_aux=True)(
            jnp.zeros(shape.shape, shape.dtype))
        weights = grads.mean(axis=(1, 2), keepdims=True)             # (B, 1, 1, C)
        cams = jax.nn.relu((weights * features).sum(axis=-1))        # (B, h, w)
        return cams / jnp.maximum(cams.max(axis=(1, 2), keepdims=True), 1e-12)

      self._grad_cam = jax.jit(grad_cam, in_shardings=(replicated, batch, batch),
                               out_shardings=replicated)

  def _check_input(self) -> None:
    """Fails before any image is read, with the model's own reason, on a crop it cannot take."""
    size, channels = self.input.image_size, self.input.channels
    try:
      with layers.conv_impl("xla"):  # Shapes only: no conv autotune at a batch never run.
        jax.eval_shape(self.loaded.model,
                       jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32))
    except (ValueError, TypeError) as e:
      raise UserError(f"{self.loaded.name} cannot take {size}x{size}x{channels} crops: "
                      f"{cli.one_line(e)}") from None

  def _check_cam(self) -> None:
    model, size, channels = self.loaded.model, self.input.image_size, self.input.channels
    if not hasattr(model, "forward_features"):
      raise UserError(f"--cam needs a model with a last-stage feature map; "
                      f"{self.loaded.name} has no forward_features")
    with layers.conv_impl("xla"):
      shape = jax.eval_shape(model.forward_features,
                             jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)).shape
    if len(shape) != 4:
      raise UserError(f"--cam needs a spatial last-stage feature map (N, H, W, C); "
                      f"{self.loaded.name}'s is {tuple(shape)} (a token sequence)")

  def padded(self, images: list[np.ndarray], rows: int = 1) -> np.ndarray:
    """The batch padded to at least `rows` rows and to a multiple of the device count (the
    padding rows are dropped)."""
    n = len(images)
    rows = -(-max(n, rows) // self.mesh.size) * self.mesh.size
    x = np.stack(images)
    return np.concatenate([x, np.zeros((rows - n, *x.shape[1:]), x.dtype)]) if rows > n else x

  def __call__(self, images: list[np.ndarray], rows: int = 1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(top-k probabilities, top-k indices, Grad-CAM maps of the top-1 class or None).
    `rows`: the batch the programs are compiled for; a smaller one is padded to it."""
    x = self.padded(images, rows)
    probabilities, indices = (np.asarray(a) for a in self._top(self.state, x))
    cams = None
    if self.cam:
      cams = np.asarray(self._grad_cam(self.state, x, indices[:, 0]))[:len(images)]
    return probabilities[:len(images)], indices[:len(images)], cams


# ------------------------------------------------------------------------------- CAM images


def cam_overlay(original: Image.Image, cam: np.ndarray, box: Sequence[float]) -> Image.Image:
  """The CAM (values in [0, 1]) as a jet heat map over the image, at the image's size."""
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel

  base = np.asarray(original.convert("RGB"), np.float32) / 255.0
  height, width = base.shape[:2]
  left, top, right, bottom = box
  # Bilinear upsampling of the map over the crop's area, zero elsewhere.
  heat_map = Image.fromarray(cam.astype(np.float32), mode="F")
  box_w, box_h = max(1, round(right - left)), max(1, round(bottom - top))
  heat_map = np.asarray(heat_map.resize((box_w, box_h), Image.Resampling.BILINEAR))
  full = np.zeros((height, width), np.float32)
  seen = np.zeros((height, width), bool)
  x0, y0 = round(left), round(top)
  xs, ys = slice(max(x0, 0), min(x0 + box_w, width)), slice(max(y0, 0), min(y0 + box_h, height))
  full[ys, xs] = heat_map[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
  seen[ys, xs] = True
  colour = colormaps["jet"](np.clip(full, 0, 1))[..., :3].astype(np.float32)
  blended = np.where(seen[..., None], 0.5 * base + 0.5 * colour, 0.4 * base)
  return Image.fromarray((blended * 255).round().astype(np.uint8))


def cam_path(cam_dir: str, image_path: str, used: set[str]) -> str:
  stem = os.path.splitext(os.path.basename(image_path))[0]
  name, n = f"{stem}.png", 1
  while name in used:
    n += 1
    name = f"{stem}-{n}.png"
  used.add(name)
  return os.path.join(cam_dir, name)


# --------------------------------------------------------------------------------- predict


def predict(loaded: Loaded, paths: Sequence[str], *, top_k: int = 5, batch_size: int = 32,
            cam_dir: str | None = None, progress: bool = True) -> Iterator[dict[str, Any]]:
  """One result per readable image (`RESULT_KEYS`), in input order; unreadable ones are
  skipped with a warning on stderr. UserError when none could be read."""
  predictor = Predictor(loaded, top_k=top_k, cam=cam_dir is not None)
  transform, channels = predictor.input.transform, predictor.input.channels
  batch_size = -(-max(batch_size, 1) // predictor.mesh.size) * predictor.mesh.size
  batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
  # Every batch is padded to the first one's size: a short last batch, or one with unreadable
  # images, would otherwise compile the model's programs again (seconds each).
  rows = len(batches[0]) if batches else 1
  bar = metrics.Progress(len(batches), 0, stream=sys.stderr,
                         enabled=progress and len(batches) > 1)
  report_every = max(1, len(batches) // 20)
  if cam_dir is not None:
    os.makedirs(cam_dir, exist_ok=True)
  used_names: set[str] = set()
  skipped, done = [], 0
  classes = loaded.classes
  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
    def read(batch):
      return list(pool.map(lambda p: decode(p, transform, channels,
                                            cam_dir is not None), batch))

    upcoming = pool.submit(read, batches[0]) if batches else None
    for b in range(len(batches)):
      decoded = upcoming.result()
      # Decoding the next batch overlaps with this batch's device work.
      upcoming = pool.submit(read, batches[b + 1]) if b + 1 < len(batches) else None
      for item in decoded:
        if item.image is None:
          skipped.append(item.path)
          if len(paths) > 1:  # A single unreadable image is the one error line below.
            print(f"warning: skipped {item.path}: {item.error} ({len(skipped)} skipped so "
                  "far)", file=sys.stderr, flush=True)
      good = [item for item in decoded if item.image is not None]
      if good:
        probabilities, indices, cams = predictor([item.image for item in good], rows)
        for i, item in enumerate(good):
          cam_file = None
          if cams is not None:
            box = transform.input_box(item.size)
            cam_file = cam_path(cam_dir, item.path, used_names)
            cam_overlay(item.original, cams[i], box).save(cam_file)
          yield {
              "image": item.path, "width": item.size[0], "height": item.size[1],
              "predictions": [
                  {"rank": r + 1, "index": int(c), "class_id": classes.ids[c],
                   "label": classes.labels[c], "probability": float(p)}
                  for r, (c, p) in enumerate(zip(indices[i], probabilities[i]))],
              "cam": cam_file}
      done += len(decoded)
      if (b + 1) % report_every == 0 or b + 1 == len(batches):
        bar.report(b + 1, {"images": done, "skipped": len(skipped)})
  if skipped and len(skipped) == len(paths):
    first = skipped[0]
    raise UserError(f"{first} is not a readable image" if len(paths) == 1 else
                    f"none of the {len(paths)} images could be read, e.g. {first}")
  if skipped:
    print(f"warning: skipped {len(skipped)} of {len(paths)} images that could not be read",
          file=sys.stderr, flush=True)


def format_text(result: dict[str, Any]) -> str:
  lines = [result["image"]]
  for p in result["predictions"]:
    name = p["label"] if p["label"] == p["class_id"] else f"{p['label']}  [{p['class_id']}]"
    lines.append(f"  {100 * p['probability']:6.2f}%  {name}")
  if result["cam"]:
    lines.append(f"  cam: {result['cam']}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  inputs = argv[1:]
  if not FLAGS.weights:
    raise UserError("--weights is required (a cnn_jax.convert directory, a .safetensors/.pth "
                    "file, or a training run's WORKDIR)")
  if not inputs:
    raise UserError("give one or more images or directories after the flags")
  if FLAGS.cam and not FLAGS.out:
    raise UserError("--cam writes PNG files: give --out DIR")
  if FLAGS.top_k < 1:
    raise UserError(f"--top_k={FLAGS.top_k} must be at least 1")
  paths = find_images(inputs)
  loaded = load(FLAGS.model, FLAGS.weights, FLAGS.params)
  if FLAGS.class_names:
    names = class_names.from_file(FLAGS.class_names)
    if len(names) != len(loaded.classes):
      raise UserError(f"--class_names {FLAGS.class_names} has {len(names)} names but the model "
                      f"has {len(loaded.classes)} classes")
    loaded.classes = names
  if FLAGS.image_size and loaded.data_config.source == "embedded" \
      and FLAGS.image_size != loaded.data_config.image_size:
    raise UserError(f"--image_size={FLAGS.image_size}: the run trained on the embedded "
                    f"{loaded.data_config.name} at {loaded.data_config.image_size} px, and its "
                    "images go into that frame; leave --image_size out")
  if FLAGS.image_size:
    loaded.data_config.unlock()
    loaded.data_config.image_size = FLAGS.image_size
  out = None
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
    out = open(os.path.join(FLAGS.out, "predictions.jsonl"), "w")
  try:
    for result in predict(loaded, paths, top_k=FLAGS.top_k, batch_size=FLAGS.batch_size,
                          cam_dir=os.path.join(FLAGS.out, "cam") if FLAGS.cam else None):
      line = json.dumps(result)
      if out is not None:
        out.write(line + "\n")
      print(line if FLAGS.json else format_text(result), flush=True)
  finally:
    if out is not None:
      out.close()


if __name__ == "__main__":
  cli.run(main, define_flags)
