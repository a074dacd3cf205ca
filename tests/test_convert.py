"""cnn_jax.convert: PyTorch checkpoints -> cnn_jax, numerical parity, bad input, init_from.

Golden fixtures (tests/fixtures/pretrained/, written by tests/fixtures/make_pretrained_golden.py
with torch/torchvision/timm) are small reduced-width models of every supported family; the
tests read their .safetensors files through the converter and compare the outputs with the
PyTorch ones: max abs difference <= 1e-4 in float32, eval mode, BN running statistics included.
"""

from __future__ import annotations

import json
import os
import re
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from cnn_jax import checkpoint, convert
from cnn_jax.errors import UserError
from cnn_jax.models import alexnet, convnext, create_model, resnet, vit
from helpers import compiled_apply, initialized, numpy_random_model, run_cli
from pretrained_fixtures import (FIXTURES, PRETRAINED, TOLERANCE, export_state_dict, load_into, nhwc,
                                 timm_state)

MODULES = {"resnet": resnet, "alexnet": alexnet, "convnext": convnext}


@pytest.fixture(scope="module")
def cases() -> dict:
  with open(os.path.join(PRETRAINED, "cases.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def golden():
  return np.load(os.path.join(PRETRAINED, "golden.npz"))


def build(spec: dict) -> nnx.Module:
  module, cls = spec["class"].split(".")
  return initialized(lambda rngs: getattr(MODULES[module], cls)(*spec["args"], **spec["kwargs"],
                                                                rngs=rngs))


@pytest.mark.parametrize("case", ["resnet_basic", "resnet_bottleneck", "alexnet",
                                  "convnextv2_official"])
def test_logits_match_pytorch(case, cases, golden):
  state = convert.read_state_dict(os.path.join(PRETRAINED, f"{case}.safetensors"))
  model = build(cases[case])
  converted = convert.convert_state_dict(model, state)
  assert converted.has_head and converted.num_classes == 5
  n_params = sum(v.size for v in converted.params.values())
  assert n_params == sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  logits = compiled_apply(load_into(model, converted), nhwc(golden[f"{case}/input_nchw"]))
  np.testing.assert_allclose(np.asarray(logits), golden[f"{case}/logits"], rtol=0,
                             atol=TOLERANCE)


def test_resnet_batch_stats_come_from_the_checkpoint(cases):
  state = convert.read_state_dict(os.path.join(PRETRAINED, "resnet_basic.safetensors"))
  converted = convert.convert_state_dict(build(cases["resnet_basic"]), state)
  np.testing.assert_array_equal(converted.batch_stats[("layer1", 0, "bn1", "var")],
                                state["layer1.0.bn1.running_var"])
  np.testing.assert_array_equal(converted.params[("stem", "conv1", "kernel")],
                                state["conv1.weight"].transpose(2, 3, 1, 0))


def test_fcmae_encoder_matches_timm_features(cases, golden):
  """FCMAE pre-training layout (MinkowskiEngine kernels, encoder. prefix, decoder dropped)."""
  state = convert.read_state_dict(os.path.join(PRETRAINED, "convnextv2_fcmae.safetensors"))
  assert any(k.startswith("decoder.") for k in state)
  model = build(cases["convnextv2_fcmae"])
  converted = convert.convert_state_dict(model, state)
  assert not converted.has_head and converted.num_classes is None
  assert converted.head == ("head",)
  assert not any(path[0] == "head" for path in converted.params)
  features = compiled_apply(load_into(model, converted),
                            nhwc(golden["convnextv2_fcmae/input_nchw"]), method="forward_features")
  np.testing.assert_allclose(np.asarray(features).transpose(0, 3, 1, 2),
                             golden["convnextv2_fcmae/features_nchw"], rtol=0, atol=TOLERANCE)


def test_timm_vit_through_safetensors(tmp_path):
  """Reuses tests/fixtures/vit_timm_golden.npz, written to a .safetensors file first."""
  arrays = np.load(os.path.join(FIXTURES, "vit_timm_golden.npz"))
  path = str(tmp_path / "vit.safetensors")
  save_file(timm_state(arrays), path)
  model = initialized(lambda rngs: vit.VisionTransformer(
      patch_size=int(arrays["config_patch_size"]), embed_dim=int(arrays["config_embed_dim"]),
      depth=int(arrays["config_depth"]), num_heads=int(arrays["config_num_heads"]),
      num_classes=int(arrays["config_num_classes"]), image_size=int(arrays["config_img_size"]),
      rngs=rngs))
  converted = convert.convert_state_dict(model, convert.read_state_dict(path))
  assert converted.source == "timm VisionTransformer"
  logits = compiled_apply(load_into(model, converted), nhwc(arrays["input_nchw"]))
  np.testing.assert_allclose(np.asarray(logits), arrays["logits"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("tag", ["v1", "v2"])
def test_timm_convnext_through_safetensors(tag, tmp_path):
  """Reuses tests/fixtures/convnext_timm_golden.npz (V2 there has timm's conv_mlp=True)."""
  arrays = np.load(os.path.join(FIXTURES, "convnext_timm_golden.npz"))
  path = str(tmp_path / f"convnext_{tag}.safetensors")
  save_file({k: v for k, v in timm_state(arrays, f"{tag}/").items()}, path)
  options = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5)
  if tag == "v2":
    options.update(grn=True, layer_scale_init=None)
  model = initialized(lambda rngs: convnext.ConvNeXt(**options, rngs=rngs))
  converted = convert.convert_state_dict(model, convert.read_state_dict(path))
  assert converted.source == "timm ConvNeXt"
  logits = compiled_apply(load_into(model, converted), nhwc(arrays["input_nchw"]))
  np.testing.assert_allclose(np.asarray(logits), arrays[f"{tag}/logits"], rtol=0,
                             atol=TOLERANCE)


def test_torch_checkpoint_without_torch_says_how_to_install(tmp_path, monkeypatch):
  path = tmp_path / "model.pth"
  path.write_bytes(b"not really")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(UserError, match=r"needs PyTorch.*pip install torch"):
    convert.read_state_dict(str(path))


def test_torch_checkpoint_with_wrapper(tmp_path):
  torch = pytest.importorskip("torch")
  path = str(tmp_path / "official.pth")
  torch.save({"model": {"a.weight": torch.ones(2, 3)}, "epoch": 3}, path)
  state = convert.read_state_dict(path)
  assert list(state) == ["a.weight"] and state["a.weight"].shape == (2, 3)


# --------------------------------------------------------------------------- bad input


@pytest.fixture()
def resnet_state() -> dict[str, np.ndarray]:
  return convert.read_state_dict(os.path.join(PRETRAINED, "resnet_basic.safetensors"))


def test_missing_key_is_named(cases, resnet_state):
  del resnet_state["layer2.0.conv1.weight"]
  with pytest.raises(UserError, match=r"1 missing key\(s\), e\.g\. 'layer2\.0\.conv1\.weight'"):
    convert.convert_state_dict(build(cases["resnet_basic"]), resnet_state)


def test_unexpected_key_is_named(cases, resnet_state):
  resnet_state["layer5.0.conv1.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(UserError, match=r"unexpected key\(s\), e\.g\. 'layer5\.0\.conv1\.weight' "
                                      r"\(3, 3\)"):
    convert.convert_state_dict(build(cases["resnet_basic"]), resnet_state)


def test_shape_mismatch_names_key_and_both_shapes(cases, resnet_state):
  resnet_state["layer1.0.conv2.weight"] = np.zeros((8, 8, 5, 5), np.float32)
  with pytest.raises(UserError) as info:
    convert.convert_state_dict(build(cases["resnet_basic"]), resnet_state)
  message = str(info.value)
  assert "'layer1.0.conv2.weight'" in message and "(8, 8, 5, 5)" in message
  assert "(8, 8, 3, 3)" in message and "\n" not in message


def test_other_architecture_is_refused(cases):
  state = convert.read_state_dict(os.path.join(PRETRAINED, "alexnet.safetensors"))
  with pytest.raises(UserError, match=r"does not match ResNet.*another architecture"):
    convert.convert_state_dict(build(cases["resnet_basic"]), state)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / "notes.safetensors"
  path.write_text("hello, I am not a checkpoint")
  with pytest.raises(UserError, match=r"not a readable safetensors checkpoint"):
    convert.read_state_dict(str(path))
  with pytest.raises(UserError, match=r"not found"):
    convert.read_state_dict(str(tmp_path / "absent.safetensors"))


def test_cli_converts_and_init_from_loads(tmp_path):
  """python -m cnn_jax.convert on a full-size convnextv2_atto in timm names, then
  load_pretrained with the head kept, dropped and resized. The models' values are drawn in
  NumPy: which values they hold does not matter here, and a full-size initialiser compiles for
  seconds."""
  source = numpy_random_model("convnextv2_atto", 1, num_classes=7)
  checkpoint_file = str(tmp_path / "atto.safetensors")
  save_file(export_state_dict(source), checkpoint_file)
  out = str(tmp_path / "converted")
  result = run_cli("cnn_jax.convert", "--model=convnextv2_atto",
                   f"--checkpoint={checkpoint_file}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  assert "7-class head" in result.stdout
  with open(os.path.join(out, "pretrained.json")) as f:
    meta = json.load(f)
  assert meta["model"] == "convnextv2_atto" and meta["num_classes"] == 7
  assert meta["head"] == ["head.fc"]

  expected = nnx.state(source, nnx.Param)
  target = numpy_random_model("convnextv2_atto", 2, num_classes=7)
  params, rest = nnx.state(target, nnx.Param), nnx.state(target, nnx.Not(nnx.Param))
  loaded, _ = checkpoint.load_pretrained(params, rest, out, "keep")
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  other = numpy_random_model("convnextv2_atto", 3, num_classes=3)
  fresh = nnx.state(other, nnx.Param)
  with pytest.raises(UserError, match=r"head\.fc\.(bias|kernel) has shape \((320, )?7,?\).*\((320, )?3,?\).*"
                                      r"num_classes=7 or --config\.init_head=drop"):
    checkpoint.load_pretrained(fresh, nnx.state(other, nnx.Not(nnx.Param)), out, "keep")
  dropped, _ = checkpoint.load_pretrained(fresh, nnx.state(other, nnx.Not(nnx.Param)), out,
                                          "drop")
  np.testing.assert_array_equal(dropped["head"]["fc"]["kernel"][...],
                                fresh["head"]["fc"]["kernel"][...])
  np.testing.assert_array_equal(dropped["stem"]["conv"]["kernel"][...],
                                expected["stem"]["conv"]["kernel"][...])


def test_cli_bad_input_one_line_nothing_written(tmp_path, cases):
  state = convert.read_state_dict(os.path.join(PRETRAINED, "resnet_basic.safetensors"))
  state["fc.weight"] = state["fc.weight"][:, :3].copy()  # wrong in_features for any ResNet-18
  bad = str(tmp_path / "bad.safetensors")
  save_file(state, bad)
  out = tmp_path / "out"
  result = run_cli("cnn_jax.convert", "--model=resnet18", f"--checkpoint={bad}",
                   f"--out={out}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ")
  assert "missing key" in lines[0] or "shape mismatch" in lines[0]
  assert not out.exists() and os.listdir(tmp_path) == ["bad.safetensors"]


def test_load_pretrained_refuses_a_non_checkpoint_dir(tmp_path):
  model = create_model("lenet5", rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match=r"not a converted checkpoint.*cnn_jax\.convert"):
    checkpoint.load_pretrained(nnx.state(model, nnx.Param), nnx.state(model, nnx.Not(nnx.Param)),
                               str(tmp_path), "keep")


def test_eval_config_evaluates_converted_weights(tmp_path, capsys):
  """configs/eval_imagenet.py: 0 training steps, init_from restores, top-1 and top-5 reported.

  A CIFAR ResNet-20 (same ResNet class, torchvision names) stands in for an ImageNet model and
  synthetic images for ImageNet."""
  from cnn_jax import train  # pylint: disable=import-outside-toplevel
  from helpers import load_config  # pylint: disable=import-outside-toplevel

  source = create_model("resnet20", rngs=nnx.Rngs(5), num_classes=10)
  checkpoint_file = str(tmp_path / "resnet20.safetensors")
  save_file(export_state_dict(source), checkpoint_file)
  weights = str(tmp_path / "weights")
  convert.convert_file("resnet20", checkpoint_file, weights)

  def run(init_from: str, workdir: str) -> dict[str, float]:
    config = load_config("eval_imagenet", **{
        "model.name": "resnet20", "model.num_classes": 10, "data.source": "synthetic",
        "data.image_size": 32, "data.batch_size": 16, "data.eval_batch_size": 16,
        "data.synthetic.num_train": 16, "data.synthetic.num_eval": 24,
        # The random-init comparison opts out of the config's required init_from.
        "init_from": init_from, "init_from_required": bool(init_from)})
    return train.train_and_evaluate(config, str(tmp_path / workdir))

  loaded = run(weights, "eval")
  assert f"weights from {weights}: all, the classifier included" in capsys.readouterr().out
  assert set(loaded) >= {"loss", "accuracy", "top5_accuracy"}
  assert 0 <= loaded["accuracy"] <= loaded["top5_accuracy"] <= 1
  assert not os.path.exists(tmp_path / "eval" / "checkpoints" / "0")
  # The seed-0 random init of the same model scores differently: the weights were used.
  assert run("", "random")["loss"] != pytest.approx(loaded["loss"], rel=1e-6)
  assert "weights from" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["bicubic_0875", "bilinear_0900"])
def test_eval_preprocessing_matches_timm(name, cases, golden):
  """cnn_jax's EvalTransform vs timm's create_transform(is_training=False) on the same PNGs.

  Both resize with PIL and normalise in float32: the tensors are identical (max abs
  difference 0.0 with pillow 13 / torchvision 0.29 / timm 1.0.31); 1e-5 leaves room for other
  versions' float rounding, far below one grey level (1 / 255 / 0.229 = 0.017)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from cnn_jax.data.transforms import EvalTransform  # pylint: disable=import-outside-toplevel

  settings = cases["preprocess"][name]
  data_config = ml_collections.ConfigDict({
      "image_size": settings["size"], "crop_pct": settings["crop_pct"],
      "interpolation": settings["interpolation"], "channels": 3,
      "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
  transform = EvalTransform(data_config)
  for i in range(3):
    with Image.open(os.path.join(PRETRAINED, f"image{i}.png")) as img:
      ours = transform(img.convert("RGB"))
    reference = golden[f"preprocess/{name}/image{i}"].transpose(1, 2, 0)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_official_convnext_v1_names(tmp_path):
  """facebookresearch/ConvNeXt names (LayerScale `gamma`), from the timm V1 golden weights."""
  arrays = np.load(os.path.join(FIXTURES, "convnext_timm_golden.npz"))
  official = {}
  for key, value in timm_state(arrays, "v1/").items():
    key = key.replace("stem.", "downsample_layers.0.")
    key = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
    key = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", key)
    key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
    official[key.replace("head.norm.", "norm.").replace("head.fc.", "head.")] = value
  path = str(tmp_path / "convnext_v1_official.safetensors")
  save_file({"module." + k: v for k, v in official.items()}, path)  # DataParallel prefix too
  model = initialized(lambda rngs: convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32),
                                                     num_classes=5, rngs=rngs))
  converted = convert.convert_state_dict(model, convert.read_state_dict(path))
  assert converted.source == "official ConvNeXt"
  logits = compiled_apply(load_into(model, converted), nhwc(arrays["input_nchw"]))
  np.testing.assert_allclose(np.asarray(logits), arrays["v1/logits"], rtol=0, atol=TOLERANCE)


def test_fcmae_checkpoint_needs_init_head_drop(tmp_path, cases):
  spec = cases["convnextv2_fcmae"]
  state = convert.read_state_dict(os.path.join(PRETRAINED, "convnextv2_fcmae.safetensors"))
  converted = convert.convert_state_dict(build(spec), state)
  out = str(tmp_path / "fcmae")
  convert.save_pretrained(out, converted, model_name="tiny", checkpoint_path="fcmae.safetensors")
  model = build(spec)
  params, rest = nnx.state(model, nnx.Param), nnx.state(model, nnx.Not(nnx.Param))
  with pytest.raises(UserError, match=r"no classifier weights.*init_head=drop"):
    checkpoint.load_pretrained(params, rest, out, "keep")
  loaded, _ = checkpoint.load_pretrained(params, rest, out, "drop")
  np.testing.assert_array_equal(loaded["head"]["norm"]["scale"][...],
                                params["head"]["norm"]["scale"][...])
  np.testing.assert_array_equal(loaded["stem"]["conv"]["kernel"][...],
                                converted.params[("stem", "conv", "kernel")])
  with pytest.raises(UserError, match=r"already exists and is not empty"):
    convert.save_pretrained(out, converted, model_name="tiny", checkpoint_path="x")
