"""create_model(name, pretrained=PATH): a converted directory or a checkpoint file, in eval mode.

The golden fixtures (tests/fixtures/pretrained/, tests/fixtures/*_timm_golden.npz) are
reduced-width models; registered variants take their widths as options
(`depths=`, `dims=`, ...), so `create_model` builds the same architecture.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from cnn_jax import convert
from cnn_jax.errors import UserError
from cnn_jax.models import create_model
from helpers import abstract_apply, compiled_apply
from pretrained_fixtures import FIXTURES, PRETRAINED, TOLERANCE, load_into, nhwc, timm_state

CONVNEXT_TINY_WIDTHS = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))


@pytest.fixture(scope="module")
def golden():
  return np.load(os.path.join(PRETRAINED, "golden.npz"))


def official_v2_file() -> str:
  return os.path.join(PRETRAINED, "convnextv2_official.safetensors")


def test_file_gives_the_logits_of_convert_then_load(golden, tmp_path):
  """One call vs the two-step path (convert to a directory, then load_pretrained by hand)."""
  x = nhwc(golden["convnextv2_official/input_nchw"])
  direct = create_model("convnextv2_atto", pretrained=official_v2_file(),
                        **CONVNEXT_TINY_WIDTHS)
  assert direct.num_classes == 5  # the checkpoint's, not the variant's 1000
  np.testing.assert_allclose(np.asarray(compiled_apply(direct, x)),
                             golden["convnextv2_official/logits"], rtol=0, atol=TOLERANCE)

  state = convert.read_state_dict(official_v2_file())
  by_hand = create_model("convnextv2_atto", rngs=nnx.Rngs(7), num_classes=5,
                         **CONVNEXT_TINY_WIDTHS)
  by_hand = load_into(by_hand, convert.convert_state_dict(by_hand, state))
  np.testing.assert_array_equal(np.asarray(compiled_apply(direct, x)),
                                np.asarray(compiled_apply(by_hand, x)))

  out = str(tmp_path / "converted")
  convert.save_pretrained(out, convert.convert_state_dict(by_hand, state),
                          model_name="convnextv2_atto", checkpoint_path=official_v2_file())
  from_dir = create_model("convnextv2_atto", pretrained=out, **CONVNEXT_TINY_WIDTHS)
  np.testing.assert_array_equal(np.asarray(compiled_apply(from_dir, x)),
                                np.asarray(compiled_apply(by_hand, x)))


def test_comes_back_in_eval_mode(golden):
  """Stochastic depth and dropout asked for in the options are off: two calls agree and match
  PyTorch's eval-mode logits."""
  model = create_model("convnextv2_atto", pretrained=official_v2_file(), drop_path_rate=0.5,
                       drop_rate=0.5, **CONVNEXT_TINY_WIDTHS)
  x = nhwc(golden["convnextv2_official/input_nchw"])
  first, second = np.asarray(compiled_apply(model, x)), np.asarray(compiled_apply(model, x))
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(first, golden["convnextv2_official/logits"], rtol=0,
                             atol=TOLERANCE)


def test_alexnet_file(golden):
  with open(os.path.join(PRETRAINED, "cases.json")) as f:
    cases = json.load(f)
  options = {k: v for k, v in cases["alexnet"]["kwargs"].items() if k != "num_classes"}
  alexnet = create_model("alexnet", pretrained=os.path.join(PRETRAINED, "alexnet.safetensors"),
                         **options)
  logits = compiled_apply(alexnet, nhwc(golden["alexnet/input_nchw"]))
  np.testing.assert_allclose(np.asarray(logits), golden["alexnet/logits"], rtol=0, atol=TOLERANCE)


def test_timm_vit_file(tmp_path):
  arrays = np.load(os.path.join(FIXTURES, "vit_timm_golden.npz"))
  path = str(tmp_path / "vit.safetensors")
  save_file(timm_state(arrays), path)
  vit = create_model("vit_tiny_patch16_224", pretrained=path,
                     patch_size=int(arrays["config_patch_size"]),
                     embed_dim=int(arrays["config_embed_dim"]), depth=int(arrays["config_depth"]),
                     num_heads=int(arrays["config_num_heads"]),
                     image_size=int(arrays["config_img_size"]))
  np.testing.assert_allclose(np.asarray(compiled_apply(vit, nhwc(arrays["input_nchw"]))),
                             arrays["logits"], rtol=0, atol=TOLERANCE)


def test_other_num_classes_keeps_a_fresh_head():
  model = create_model("convnextv2_atto", pretrained=official_v2_file(), num_classes=3,
                       **CONVNEXT_TINY_WIDTHS)
  fresh = create_model("convnextv2_atto", rngs=nnx.Rngs(0), num_classes=3,
                       **CONVNEXT_TINY_WIDTHS)
  state = convert.read_state_dict(official_v2_file())
  np.testing.assert_array_equal(model.head.fc.kernel[...], fresh.head.fc.kernel[...])
  np.testing.assert_array_equal(  # the trunk is the checkpoint's (official HWIO from OIHW)
      model.stem.conv.kernel[...], state["downsample_layers.0.0.weight"].transpose(2, 3, 1, 0))


def test_fcmae_encoder_file_has_a_fresh_head(golden):
  model = create_model("convnextv2_atto",
                       pretrained=os.path.join(PRETRAINED, "convnextv2_fcmae.safetensors"),
                       num_classes=4, **CONVNEXT_TINY_WIDTHS)
  x = nhwc(golden["convnextv2_fcmae/input_nchw"])
  features = compiled_apply(model, x, method="forward_features")
  np.testing.assert_allclose(np.asarray(features).transpose(0, 3, 1, 2),
                             golden["convnextv2_fcmae/features_nchw"], rtol=0, atol=TOLERANCE)
  assert abstract_apply(model, x.shape).shape == (2, 4)


def test_rngs_still_builds_a_random_model():
  seeded = create_model("lenet5", rngs=nnx.Rngs(3))
  default = create_model("lenet5")
  assert jax.tree.structure(nnx.state(seeded)) == jax.tree.structure(nnx.state(default))
  assert not np.array_equal(seeded.head.kernel[...], default.head.kernel[...])


@pytest.mark.parametrize("pretrained, message", [
    ("absent.safetensors", r"not found"),
    ("alexnet.safetensors", r"does not match ConvNeXt.*another architecture"),
    ("cases.json", r"neither a directory written by python -m cnn_jax\.convert nor"),
    (".", r"not a converted checkpoint"),
])
def test_bad_pretrained_is_a_user_error(pretrained, message):
  with pytest.raises(UserError, match=message):
    create_model("convnextv2_atto", pretrained=os.path.join(PRETRAINED, pretrained))


def test_unknown_model_fails_before_reading(tmp_path):
  with pytest.raises(UserError, match=r"unknown model 'convnextv2_tinyy'.*convnextv2_tiny"):
    create_model("convnextv2_tinyy", pretrained=str(tmp_path / "absent.safetensors"))
