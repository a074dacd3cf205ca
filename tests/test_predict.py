"""python -m cnn_jax.predict: top-k agrees with the Python API, the JSON schema, Grad-CAM,
a training run's WORKDIR as --weights, and bad input (one `error:` line, exit 2)."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from flax import nnx
from PIL import Image
from safetensors.numpy import save_file

from cnn_jax import predict
from cnn_jax.data import class_names
from cnn_jax.data.sources.images import CorruptImage, decode_image
from cnn_jax.data.transforms import EvalTransform
from cnn_jax.errors import UserError
from cnn_jax.models import create_model
from helpers import (compiled_apply, cut_short, load_config, normal, numpy_random_model, run_cli,
                     run_cli_in_process)
from pretrained_fixtures import PRETRAINED, export_state_dict

FIXTURE_IMAGES = [os.path.join(PRETRAINED, f"image{i}.png") for i in range(3)]
WIDTHS = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))


@nnx.jit
def logits_of(model: nnx.Module, images: jax.Array) -> jax.Array:
  """The model's logits, jitted: op by op, each of its ops compiles as its own program."""
  return model(images)


def fixture_loaded(image_size: int = 64) -> predict.Loaded:
  """The golden official ConvNeXt V2 fixture with its family's eval transform."""
  model = create_model("convnextv2_atto",
                       pretrained=os.path.join(PRETRAINED, "convnextv2_official.safetensors"),
                       **WIDTHS)
  data_config = predict.eval_data_config("convnextv2_atto")
  data_config.unlock()
  data_config.image_size = image_size
  return predict.Loaded("convnextv2_atto", model, data_config, class_names.indices(5))


def test_top1_is_the_models_argmax_and_schema_is_stable(tmp_path, monkeypatch):
  loaded = fixture_loaded()
  shapes = []
  padded = predict.Predictor.padded

  def recorded(self, images, rows=1):
    batch = padded(self, images, rows)
    shapes.append(batch.shape)
    return batch

  monkeypatch.setattr(predict.Predictor, "padded", recorded)
  # 18 images in batches of 16 (a multiple of conftest's 8 devices): the short last batch runs
  # at the first one's shape, so nothing compiles twice, and gives the same predictions.
  results = list(predict.predict(loaded, FIXTURE_IMAGES * 6, top_k=3, batch_size=16,
                                 progress=False))
  assert shapes == [(16, 64, 64, 3)] * 2
  assert [r["image"] for r in results] == FIXTURE_IMAGES * 6
  for again, first in zip(results[3:], results[:3] * 5):
    assert [p["index"] for p in again["predictions"]] == [p["index"] for p in first["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in again["predictions"]],
                               [p["probability"] for p in first["predictions"]], rtol=1e-6)
  results = results[:3]
  transform = EvalTransform(loaded.data_config)
  for path, result in zip(FIXTURE_IMAGES, results, strict=True):
    with Image.open(path) as img:
      logits = np.asarray(logits_of(loaded.model, transform(img.convert("RGB"))[None]))[0]
      size = img.size
    assert tuple(result) == predict.RESULT_KEYS
    assert result["image"] == path and (result["width"], result["height"]) == size
    assert result["cam"] is None
    predictions = result["predictions"]
    assert [tuple(p) for p in predictions] == [predict.PREDICTION_KEYS] * 3
    assert [p["rank"] for p in predictions] == [1, 2, 3]
    assert [p["index"] for p in predictions] == list(np.argsort(-logits)[:3])
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([p["probability"] for p in predictions],
                               np.sort(probabilities)[::-1][:3], rtol=1e-5)
    assert all(isinstance(p["class_id"], str) and isinstance(p["label"], str)
               for p in predictions)
    json.dumps(result)  # plain JSON types only


def test_grad_cam_is_the_class_activation_map_of_a_resnet():
  """ResNet = mean-pool + linear: d logit_c / d A = W[:, c] / (h w), so Grad-CAM reduces to
  Zhou et al.'s CAM, relu(A @ W[:, c]), normalised to max 1."""
  model = create_model("resnet18", rngs=nnx.Rngs(0), num_classes=4)
  model.eval()
  data_config = predict.eval_data_config("resnet18")
  data_config.unlock()
  data_config.image_size = 64
  loaded = predict.Loaded("resnet18", model, data_config, class_names.indices(4))
  predictor = predict.Predictor(loaded, top_k=1, cam=True)
  x = normal(0, (3, 64, 64, 3))
  _, indices, cams = predictor(list(np.asarray(x)))
  features = np.asarray(compiled_apply(model, x, method="forward_features"))
  kernel = np.asarray(model.fc.kernel[...])
  for i in range(3):
    expected = np.maximum(features[i] @ kernel[:, indices[i, 0]], 0)
    np.testing.assert_allclose(cams[i], expected / expected.max(), rtol=1e-4, atol=1e-5)


def test_cam_needs_a_spatial_feature_map():
  model = create_model("vit_tiny_patch16_224", rngs=nnx.Rngs(0), num_classes=3, depth=1,
                       embed_dim=24, num_heads=2, image_size=32)
  data_config = predict.eval_data_config("vit_tiny_patch16_224")
  data_config.unlock()
  data_config.image_size = 32
  loaded = predict.Loaded("vit", model, data_config, class_names.indices(3))
  with pytest.raises(UserError, match=r"--cam needs a spatial last-stage feature map"):
    predict.Predictor(loaded, top_k=1, cam=True)


def test_crop_box_maps_the_centre_crop_back():
  # 200x100 image, 64 px crop at crop_pct 0.5: the shorter side goes to 128 (scale 1.28), the
  # crop is the centre 64x64 of 256x128, i.e. 50x50 px of the original around its centre.
  data_config = predict.eval_data_config("resnet18")
  data_config.unlock()
  data_config.image_size, data_config.crop_pct = 64, 0.5
  left, top, right, bottom = EvalTransform(data_config).input_box((200, 100))
  assert (right - left, bottom - top) == pytest.approx((50, 50))
  assert ((left + right) / 2, (top + bottom) / 2) == pytest.approx((100, 50))


def test_imagenet_names_pair_ids_and_readable_names():
  names = class_names.imagenet()
  assert len(names) == 1000 and len(set(names.ids)) == 1000
  assert list(names.ids) == sorted(names.ids)  # the ILSVRC class order
  assert (names.ids[0], names.labels[0]) == ("n01440764", "tench")
  assert (names.ids[999], names.labels[999]) == ("n15075141", "toilet tissue")


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def atto_checkpoint(tmp_path_factory) -> str:
  """A full-size convnextv2_atto with 7 classes in timm names (random weights, drawn in NumPy:
  its initialiser would compile for seconds)."""
  path = str(tmp_path_factory.mktemp("atto") / "atto.safetensors")
  save_file(export_state_dict(numpy_random_model("convnextv2_atto", 1, num_classes=7)), path)
  return path


def test_cli_json_and_cam(tmp_path, atto_checkpoint):
  images = tmp_path / "images"
  (images / "nested").mkdir(parents=True)
  for path in FIXTURE_IMAGES[:2]:
    shutil.copy(path, images)
  shutil.copy(FIXTURE_IMAGES[2], images / "nested")
  (images / "nested" / "broken.jpg").write_bytes(b"not an image")
  (images / "notes.txt").write_text("ignored: not an image extension")
  names = tmp_path / "names.txt"
  names.write_text("\n".join(f"thing {i}" for i in range(7)))
  out = tmp_path / "out"
  result = run_cli("cnn_jax.predict", "--model=convnextv2_atto", f"--weights={atto_checkpoint}",
                   "--image_size=64", "--json", "--cam", f"--out={out}", "--top_k=2",
                   "--batch_size=2", f"--class_names={names}", str(images))
  assert result.returncode == 0, result.stderr
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [os.path.basename(r["image"]) for r in lines] == ["image0.png", "image1.png",
                                                           "image2.png"]
  assert "skipped" in result.stderr and "broken.jpg" in result.stderr
  with open(out / "predictions.jsonl") as f:
    assert [json.loads(line) for line in f] == lines

  model = create_model("convnextv2_atto", pretrained=atto_checkpoint)
  data_config = predict.eval_data_config("convnextv2_atto")
  data_config.unlock()
  data_config.image_size = 64
  for r in lines:
    assert tuple(r) == predict.RESULT_KEYS and len(r["predictions"]) == 2
    with Image.open(r["image"]) as img:
      logits = logits_of(model, EvalTransform(data_config)(img.convert("RGB"))[None])
      size = img.size
    top = r["predictions"][0]
    assert top["index"] == int(jnp.argmax(logits)) and top["label"] == f"thing {top['index']}"
    with Image.open(r["cam"]) as cam:
      assert cam.size == size and cam.mode == "RGB"


def expect_one_error_line(result, pattern: str) -> None:
  assert result.returncode == 2, (result.stdout, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert pattern in lines[0], lines[0]


def test_cli_bad_input(tmp_path, atto_checkpoint):
  not_image = tmp_path / "photo.jpg"
  not_image.write_text("hello")
  empty = tmp_path / "empty"
  empty.mkdir()
  good = FIXTURE_IMAGES[0]
  weights = f"--weights={atto_checkpoint}"
  expect_one_error_line(run_cli("cnn_jax.predict", "--model=convnextv2_tinyy", weights, good),
                        "unknown model 'convnextv2_tinyy'")
  cases = [
      (["--model=convnextv2_atto", weights, str(not_image)], "is not a readable image"),
      (["--model=convnextv2_atto", weights, str(empty)], "holds no images"),
      (["--model=resnet18", weights, good], "does not match ResNet"),
      (["--model=convnextv2_atto", f"--weights={tmp_path / 'absent'}", good], "does not exist"),
      (["--model=convnextv2_atto", weights, "--cam", good], "--cam writes PNG files"),
  ]
  for args, pattern in cases:  # In this process: the case above is the real process's check.
    expect_one_error_line(run_cli_in_process("cnn_jax.predict", *args), pattern)


def test_weights_workdir_of_a_training_run(tmp_path):
  """--weights WORKDIR: the run's model, eval transform and checkpoint. The probabilities of
  all classes on the run's own eval images give back its final eval loss, and those of the
  run's EMA parameters its final ema_loss."""
  from cnn_jax import train  # pylint: disable=import-outside-toplevel
  from cnn_jax.data import sources  # pylint: disable=import-outside-toplevel

  config = load_config("resnet_cifar10", "smoke",
                       **{"checkpoint.best_metric": "", "ema_decay": 0.5, "mesh.num_devices": 1})
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(config, workdir)
  splits = sources.create_source(config)
  eval_source, num_classes = splits.eval, splits.num_classes
  paths, labels = [], []
  for i in range(len(eval_source)):
    image, label = eval_source[i]
    paths.append(str(tmp_path / f"eval{i}.png"))
    Image.fromarray(image).save(paths[-1])  # PNG: lossless, the same pixels
    labels.append(label)

  def eval_loss(loaded: predict.Loaded) -> float:
    results = list(predict.predict(loaded, paths, top_k=num_classes, progress=False))
    return np.mean([-np.log(next(p["probability"] for p in r["predictions"]
                                 if p["index"] == label))
                    for r, label in zip(results, labels, strict=True)])

  loaded = predict.load(None, workdir)  # auto: no ema_ best metric, so the trained params
  assert loaded.name == config.model.name and len(loaded.classes) == num_classes
  assert eval_loss(loaded) == pytest.approx(final["loss"], rel=1e-4)
  assert final["ema_loss"] != pytest.approx(final["loss"], rel=1e-3)
  assert eval_loss(predict.load(None, workdir, "ema")) == pytest.approx(final["ema_loss"],
                                                                         rel=1e-4)
  with pytest.raises(UserError, match=r"trained resnet20; leave --model out"):
    predict.load("resnet56", workdir)


# Its unreadable checkpoint's other reads finish in tensorstore's threads; those collected after
# the read reach pytest's own hook, not the one predict leaves in place.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_weights_workdir_of_a_run_on_the_embedded_mnist(tmp_path):
  """A run on an embedded set saw float arrays, never files. Its test digits written as 28x28
  PNGs (the set's own pixels, before it padded them to 32) go through predict into the same
  frame with the same statistics: their probabilities give back the run's final eval loss."""
  from cnn_jax import train  # pylint: disable=import-outside-toplevel
  from cnn_jax.data.sources import embedded  # pylint: disable=import-outside-toplevel

  config = load_config("lenet5_mnist", **{"total_steps": 12, "schedule.warmup_epochs": 0.1,
                                          "data.num_test": 200, "mesh.num_devices": 1})
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(config, workdir)
  test = embedded.load_arrays(config.data).test
  before, after = embedded.file_layout(config.data).padding
  assert (before, after) == (2, 2)
  paths = []
  for i, image in enumerate(test.images):
    pixels = np.round(image[before:-after, before:-after, 0] * 255).astype(np.uint8)
    paths.append(str(tmp_path / f"digit{i}.png"))
    Image.fromarray(pixels).save(paths[-1])

  loaded = predict.load(None, workdir)
  assert predict.image_input(loaded.data_config).channels == 1
  results = list(predict.predict(loaded, paths, top_k=10, batch_size=100, progress=False))
  loss = np.mean([-np.log(next(p["probability"] for p in r["predictions"] if p["index"] == y))
                  for r, y in zip(results, test.labels, strict=True)])
  assert loss == pytest.approx(final["loss"], rel=1e-4)
  accuracy = np.mean([r["predictions"][0]["index"] == y
                      for r, y in zip(results, test.labels, strict=True)])
  assert accuracy == pytest.approx(final["accuracy"], abs=1e-6)
  expect_one_error_line(
      run_cli_in_process("cnn_jax.predict", f"--weights={workdir}", "--image_size=40", paths[0]),
      "--image_size=40: the run trained on the embedded mnist_subset at 32 px")
  cut_short(os.path.join(workdir, "checkpoints"))
  expect_one_error_line(run_cli_in_process("cnn_jax.predict", f"--weights={workdir}", paths[0]),
                        "/checkpoints cannot be read (")


def test_auto_params_follow_the_runs_best_metric(tmp_path):
  def run_config(ema_decay, best_metric):
    return ml_collections.ConfigDict({"ema_decay": ema_decay,
                                      "checkpoint": {"best_metric": best_metric}})

  assert predict.uses_ema(run_config(0.99, "ema_accuracy"), "auto")
  assert not predict.uses_ema(run_config(0.99, "accuracy"), "auto")
  assert not predict.uses_ema(run_config(0.0, "ema_accuracy"), "auto")
  assert not predict.uses_ema(run_config(0.99, "ema_accuracy"), "trained")
  assert predict.uses_ema(run_config(0.99, ""), "ema")
  released = tmp_path / "weights.safetensors"
  released.write_bytes(b"")
  with pytest.raises(UserError, match=r"--params=ema needs --weights WORKDIR"):
    predict.load("convnextv2_atto", str(released), "ema")


def test_corrupt_images_reuse_the_pipeline_decoder(tmp_path):
  path = tmp_path / "truncated.png"
  with open(FIXTURE_IMAGES[0], "rb") as f:
    path.write_bytes(f.read()[:200])
  decoded = predict.decode(str(path), EvalTransform(predict.eval_data_config("resnet18")), 3,
                           False)
  assert decoded.image is None and decoded.error
  with pytest.raises(CorruptImage):
    decode_image(str(path), 3)
