"""ViT (Dosovitskiy et al. 2021, timm's definition): sizes, numerics against timm, modes, options.

ImageNet-sized variants are only built abstractly (nnx.eval_shape); real forwards use tiny
configurations and the 32x32 variant.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.errors import UserError
from cnn_jax.models import create_model, layers, list_models
from cnn_jax.models.layers import count_params
from cnn_jax.models.vit import VisionTransformer
from helpers import abstract_model, compiled_apply, initialized, normal, numpy_filled

# timm 1.0's own counts (sum of p.numel() over timm.create_model(name).parameters()).
TIMM_PARAMS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
}
# timm VisionTransformer(img_size=32, patch_size=4, embed_dim=192/384, depth=12,
# num_heads=3/6, num_classes=10).
TIMM_PARAMS_CIFAR = {"vit_tiny_patch4_32": 5_362_762, "vit_small_patch4_32": 21_342_346}

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "vit_timm_golden.npz")


def tiny_vit(**kwargs) -> VisionTransformer:
  config = dict(patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=5,
                image_size=16)
  config.update(kwargs)
  return initialized(lambda rngs: VisionTransformer(**config, rngs=rngs))


def test_variants_registered():
  names = set(list_models())
  assert set(TIMM_PARAMS) <= names
  assert set(TIMM_PARAMS_CIFAR) <= names


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_param_counts_equal_timm(name):
  model = abstract_model(name)
  assert count_params(model) == TIMM_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS_CIFAR))
def test_param_counts_cifar_variants(name):
  model = abstract_model(name, num_classes=10)
  assert count_params(model) == TIMM_PARAMS_CIFAR[name]
  assert model.image_size == 32 and model.grid_size == 8


def test_base_abstract_shapes_and_names():
  model = abstract_model("vit_base_patch16_224")
  assert model.cls_token.shape == (1, 1, 768)
  assert model.pos_embed.shape == (1, 197, 768)  # 14*14 patches + the class token
  assert model.patch_embed.proj.kernel.shape == (16, 16, 3, 768)
  paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for name in ["patch_embed/proj/kernel", "patch_embed/proj/bias", "cls_token", "pos_embed",
               "blocks/0/norm1/scale", "blocks/0/norm1/bias", "blocks/0/attn/qkv/kernel",
               "blocks/0/attn/qkv/bias", "blocks/0/attn/proj/kernel", "blocks/0/norm2/scale",
               "blocks/0/mlp/fc1/kernel", "blocks/11/mlp/fc2/bias", "norm/scale", "head/kernel",
               "head/bias"]:
    assert name in paths, name
  assert model.blocks[0].norm1.epsilon == 1e-6 and model.norm.epsilon == 1e-6

  graphdef, state = nnx.split(model)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  out = jax.eval_shape(forward, state, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert out.shape == (2, 1000)


def _load_timm_state(model: VisionTransformer, arrays) -> None:
  """timm state_dict -> cnn_jax ViT (same names; Linear (out, in) -> (in, out), OIHW -> HWIO)."""

  def linear(layer, prefix):
    layer.kernel[...] = jnp.asarray(arrays[f"{prefix}.weight"].T)
    layer.bias[...] = jnp.asarray(arrays[f"{prefix}.bias"])

  def norm(layer, prefix):
    layer.scale[...] = jnp.asarray(arrays[f"{prefix}.weight"])
    layer.bias[...] = jnp.asarray(arrays[f"{prefix}.bias"])

  model.patch_embed.proj.kernel[...] = jnp.asarray(
      arrays["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  model.patch_embed.proj.bias[...] = jnp.asarray(arrays["patch_embed.proj.bias"])
  model.cls_token[...] = jnp.asarray(arrays["cls_token"])
  model.pos_embed[...] = jnp.asarray(arrays["pos_embed"])
  for i, block in enumerate(model.blocks):
    norm(block.norm1, f"blocks.{i}.norm1")
    linear(block.attn.qkv, f"blocks.{i}.attn.qkv")
    linear(block.attn.proj, f"blocks.{i}.attn.proj")
    norm(block.norm2, f"blocks.{i}.norm2")
    linear(block.mlp.fc1, f"blocks.{i}.mlp.fc1")
    linear(block.mlp.fc2, f"blocks.{i}.mlp.fc2")
  norm(model.norm, "norm")
  linear(model.head, "head")


def test_matches_timm_numerically():
  """Same weights and input -> timm's logits (fixture: tests/fixtures/make_vit_timm_golden.py)."""
  arrays = np.load(GOLDEN)
  model = VisionTransformer(
      patch_size=int(arrays["config_patch_size"]), embed_dim=int(arrays["config_embed_dim"]),
      depth=int(arrays["config_depth"]), num_heads=int(arrays["config_num_heads"]),
      num_classes=int(arrays["config_num_classes"]), image_size=int(arrays["config_img_size"]),
      rngs=nnx.Rngs(0))
  timm_params = sum(v.size for k, v in arrays.items()
                    if not k.startswith(("config_", "input", "logits", "timm")))
  assert count_params(model) == timm_params
  _load_timm_state(model, arrays)
  model.eval()
  logits = compiled_apply(model, jnp.asarray(arrays["input_nchw"].transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(logits), arrays["logits"], rtol=1e-4, atol=1e-5)


def test_cifar_variant_forward():
  # Numpy-drawn weights: the 12 blocks' initialiser would cost more to compile than the forward.
  model = numpy_filled(abstract_model("vit_tiny_patch4_32", num_classes=10), std=0.05)
  model.eval()
  x = normal(1, (2, 32, 32, 3))
  # One compiled program for both outputs: op by op, each of the 12 blocks' ops compiles alone.
  logits, tokens = nnx.jit(lambda m, x: (m(x), m.forward_features(x)))(model, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  assert tokens.shape == (2, 65, 192)


def test_wrong_image_size_raises():
  model = tiny_vit()
  with pytest.raises(ValueError, match=r"built for 16x16 inputs.*image_size=32"):
    model(jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="not divisible by the patch size"):
    tiny_vit(image_size=18)
  with pytest.raises(UserError, match="not divisible"):  # through the registry: one-line error
    create_model("vit_tiny_patch16_224", rngs=nnx.Rngs(0), image_size=100)
  with pytest.raises(ValueError, match="num_heads"):
    tiny_vit(num_heads=5)


def test_image_size_override():
  model = nnx.eval_shape(
      lambda: create_model("vit_small_patch16_224", rngs=nnx.Rngs(0), image_size=384))
  assert model.pos_embed.shape == (1, 24 * 24 + 1, 384)


def test_train_and_eval_modes():
  model = tiny_vit(dropout_rate=0.3, drop_path_rate=0.5, attn_dropout_rate=0.2)
  rates = [b.drop_path1.rate for b in model.blocks]
  assert rates == pytest.approx([0.0, 0.5])  # linear over blocks
  x = normal(0, (4, 16, 16, 3))
  forward = nnx.jit(lambda m, x: m(x))
  model.eval()
  e1, e2 = forward(model, x), forward(model, x)
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))  # eval: deterministic
  model.train()
  t1, t2 = forward(model, x), forward(model, x)
  assert not np.allclose(np.asarray(t1), np.asarray(e1))  # train: dropout/droppath active
  assert not np.allclose(np.asarray(t1), np.asarray(t2))  # fresh randomness each call
  model.eval()
  np.testing.assert_array_equal(np.asarray(forward(model, x)), np.asarray(e1))


def test_no_dropout_train_equals_eval():
  model = tiny_vit()
  x = normal(0, (2, 16, 16, 3))
  train_out = compiled_apply(model, x)
  model.eval()
  np.testing.assert_allclose(np.asarray(train_out), np.asarray(compiled_apply(model, x)),
                             rtol=1e-6)


def test_remat_same_values_and_grads():
  """Remat recomputes the blocks in the backward pass: same loss and grads, dropout included
  (same seeds -> same masks)."""
  x = normal(0, (2, 16, 16, 3))
  outs, grads = [], []
  for remat in (False, True):
    model = tiny_vit(remat=remat, dropout_rate=0.1, drop_path_rate=0.3)  # train mode

    def loss_fn(m):
      return jnp.sum(m(x) ** 2)

    loss, g = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    outs.append(float(loss))
    grads.append(g)
  assert outs[0] == pytest.approx(outs[1], rel=1e-5)
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads[1]))


def _abstract_forward(model, shape):
  graphdef, state = nnx.split(model)
  return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                        jax.ShapeDtypeStruct(shape, jnp.float32))


def test_bfloat16_compute_float32_params():
  model = nnx.eval_shape(lambda: tiny_vit(dtype=jnp.bfloat16))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  model.eval()
  out = _abstract_forward(model, (2, 16, 16, 3))
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 5)


def test_headless_returns_class_token_features():
  model = nnx.eval_shape(lambda: tiny_vit(num_classes=0))
  assert model.head is None
  model.eval()
  assert _abstract_forward(model, (3, 16, 16, 3)).shape == (3, 24)


def test_init_follows_timm():
  model = tiny_vit()
  qkv = np.asarray(model.blocks[0].attn.qkv.kernel[...])
  # trunc_normal(.02) from layers.py (flax's, cut at +-2 std without rescaling: std ~0.0176).
  assert 0.015 < qkv.std() < 0.022
  assert np.all(np.asarray(model.blocks[0].attn.qkv.bias[...]) == 0)
  assert np.abs(np.asarray(model.cls_token[...])).max() < 1e-4  # normal(1e-6)
  assert 0.015 < np.asarray(model.pos_embed[...]).std() < 0.022


def test_registered_variant_architecture_can_be_overridden():
  # A narrowed vit_tiny_patch4_32 (experiments/inductive_bias: matched to ResNet-20's 269,434
  # parameters on 1-channel digits): 6 blocks of width 60, 3 heads.
  model = abstract_model("vit_tiny_patch4_32", embed_dim=60, depth=6, num_heads=3,
                         num_classes=10, in_channels=1)
  assert model.embed_dim == 60 and len(model.blocks) == 6 and model.patch_size == 4
  assert count_params(model) == 269_590


def _token_major_attention(attn, x):
  """The attention as the project wrote it before heads moved ahead of tokens: (B, N, H, Dh)."""
  b, n, d = x.shape
  qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * attn.scale, k)
  probs = jax.nn.softmax(logits, axis=-1)
  return attn.proj(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d))


def test_attention_layout_same_values_and_grads():
  """The head-major attention (chosen for XLA:CPU's speed) computes what the token-major one
  did: same outputs and gradients for the input and every parameter."""
  block = tiny_vit(embed_dim=32, num_heads=4).blocks[0]
  block.eval()
  x = normal(0, (3, 17, 32))
  graphdef, params, rest = nnx.split(block.attn, nnx.Param, ...)
  weights = normal(1, (3, 17, 32))

  def loss(forward):
    return lambda p, x: jnp.sum(forward(nnx.merge(graphdef, p, rest), x) * weights)

  new = jax.jit(jax.value_and_grad(loss(lambda m, x: m(x)), argnums=(0, 1)))(params, x)
  old = jax.jit(jax.value_and_grad(loss(_token_major_attention), argnums=(0, 1)))(params, x)
  np.testing.assert_allclose(float(new[0]), float(old[0]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new[1]), jax.tree.leaves(old[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(new[1][1]).sum()) > 0


def test_cpu_forms_same_loss_and_every_gradient_as_the_plain_forms():
  """Under "auto" on CPU the ViT takes layers' LayerNorm, attention and GELU forms (their own
  gradients); under "xla" the plain ones: the same loss and gradients for the input and every
  parameter, train and eval."""
  model = tiny_vit(embed_dim=32, num_heads=4, depth=2)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = normal(0, (3, 16, 16, 3))
  labels = jnp.array([0, 3, 4])

  def loss(p, x):
    logits = nnx.merge(graphdef, p, rest)(x)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])

  results = {}
  for impl in ("auto", "xla"):
    with layers.conv_impl(impl):
      results[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  np.testing.assert_allclose(float(results["auto"][0]), float(results["xla"][0]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results["auto"][1]), jax.tree.leaves(results["xla"][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(b))) + 1e-8)
  assert sum(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(results["auto"][1])) > 10


def test_attention_by_jax_nn_same_loss_and_every_gradient_as_the_models_own():
  """attention_impl="xla" calls jax.nn.dot_product_attention (tokens before heads) where "auto"
  calls layers.attention: the same loss and gradients, the same parameters. "cudnn" differs from
  "xla" only in the implementation jax.nn is asked for, which needs a GPU."""
  x = normal(0, (3, 16, 16, 3))
  labels = jnp.array([0, 3, 4])
  results = {}
  for impl in ("auto", "xla"):
    model = tiny_vit(embed_dim=32, num_heads=4, depth=2, attention_impl=impl)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, x, graphdef=graphdef, rest=rest):
      logits = nnx.merge(graphdef, p, rest)(x)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])

    results[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  (auto_loss, auto_grads), (xla_loss, xla_grads) = results["auto"], results["xla"]
  np.testing.assert_allclose(float(auto_loss), float(xla_loss), rtol=1e-5)
  assert jax.tree.structure(auto_grads) == jax.tree.structure(xla_grads)
  for a, b in zip(jax.tree.leaves(auto_grads), jax.tree.leaves(xla_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                               atol=1e-5 * float(np.max(np.abs(b))) + 1e-8)
  # The attention's own gradients are in the comparison: qkv's kernel moves the loss.
  assert float(jnp.abs(xla_grads[0]["blocks"][0]["attn"]["qkv"]["kernel"].value).max()) > 0


@pytest.mark.parametrize("options,message", [
    ({"attention_impl": "flash"}, "attention_impl='flash' is not one of auto, xla, cudnn"),
    ({"attention_impl": "cudnn", "dtype": "bfloat16"},
     "attention_impl='cudnn' runs on an NVIDIA GPU; JAX's backend here is cpu"),
    ({"attention_impl": "xla", "attn_dropout_rate": 0.1}, "has no dropout on the attention"),
])
def test_attention_impl_that_cannot_run_is_a_one_line_user_error(options, message):
  if "dtype" in options:
    options = {**options, "dtype": jnp.dtype(options["dtype"])}
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    create_model("vit_tiny_patch4_32", **options)
