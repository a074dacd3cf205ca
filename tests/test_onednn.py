"""oneDNN's conv and batched matmul in XLA programs (cnn_jax/models/onednn.py): the FFI handlers
built from csrc/onednn.cc compute XLA's conv and its gradients and XLA's batched dots, the
attention with its backward on oneDNN is the attention, models and a training run under the
"onednn" conv impl match XLA's, and where it cannot run it says why in one line."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.models import layers, onednn
from helpers import abstract_model, load_config, normal, numpy_filled

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None, reason="no C++ compiler to build oneDNN's handler")


def _xla_conv(x, w, stride, padding, groups=1):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=groups)


# (kernel hw, stride, padding, in channels, out channels, groups, batch x height x width)
CASES = [
    ((3, 3), 1, ((1, 1), (1, 1)), 16, 16, 1, (4, 12, 12)),   # ResNet's 3x3
    ((3, 3), 2, ((0, 1), (0, 1)), 8, 12, 1, (3, 11, 13)),    # strided, SAME-like, odd sizes
    ((7, 7), 2, ((3, 3), (3, 3)), 3, 8, 1, (2, 20, 18)),     # the ImageNet stem
    ((1, 1), 2, ((0, 0), (0, 0)), 8, 16, 1, (2, 9, 9)),      # a projection shortcut
    ((4, 4), 4, ((0, 0), (0, 0)), 3, 8, 1, (2, 16, 16)),     # a patchify stem
    ((5, 5), 1, ((2, 1), (1, 2)), 6, 4, 1, (2, 9, 10)),      # uneven padding
    ((2, 3), 1, ((0, 1), (1, 1)), 5, 7, 1, (2, 8, 9)),       # a kernel that is not square
    ((7, 7), 1, ((3, 3), (3, 3)), 12, 12, 12, (2, 10, 10)),  # ConvNeXt's depthwise
    ((3, 3), 2, ((1, 1), (1, 1)), 8, 12, 4, (2, 9, 9)),      # grouped, 2 in and 3 out per group
]


@pytest.mark.parametrize("kernel_hw,stride,padding,channels,out,groups,size", CASES)
def test_onednn_conv_equals_xla_conv_in_values_and_gradients(kernel_hw, stride, padding, channels,
                                                             out, groups, size):
  x = normal(0, (*size, channels))
  w = normal(1, (*kernel_hw, channels // groups, out))
  y_ref, vjp_ref = jax.vjp(lambda x, w: _xla_conv(x, w, stride, padding, groups), x, w)
  dy = normal(2, y_ref.shape)

  def onednn_vjp(x, w, dy):
    y, pullback = jax.vjp(lambda x, w: onednn.conv(x, w, stride, padding, groups), x, w)
    return y, pullback(dy)

  y, (dx, dw) = jax.jit(onednn_vjp)(x, w, dy)
  for got, want in ((y, y_ref), *zip((dx, dw), vjp_ref(dy))):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(np.max(np.abs(want))))


def test_the_onednn_impl_puts_every_conv_on_onednn_as_close_to_float64_as_xla():
  model = numpy_filled(abstract_model("resnet20", num_classes=10))
  model.eval()  # Batch statistics of a 2-image batch would amplify rounding.
  graphdef, state = nnx.split(model)
  x = normal(1, (2, 32, 32, 3))

  def loss(state, x, impl):
    with layers.conv_impl(impl):
      logits = nnx.merge(graphdef, state)(x)
    return jnp.sum(jnp.sin(logits)), logits

  grad_fn = jax.value_and_grad(loss, has_aux=True)
  jaxpr = str(jax.make_jaxpr(grad_fn, static_argnums=2)(state, x, "onednn"))
  assert "conv_general_dilated" not in jaxpr
  # 19 convs (the stem, 18 in the blocks; option-A shortcuts have none), each with 3 calls.
  assert jaxpr.count(f"target_name={onednn.TARGET}") == 19 * 3
  with jax.enable_x64():
    (_, logits64), grads64 = jax.jit(grad_fn, static_argnums=2)(
        jax.tree.map(lambda a: a.astype(jnp.float64), state), x.astype(jnp.float64), "xla")
    logits64, grads64 = jax.tree.map(np.asarray, (logits64, grads64))
  errors = {}
  for impl in ("xla", "onednn"):
    (_, logits), grads = jax.jit(grad_fn, static_argnums=2)(state, x, impl)
    errors[impl] = [np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want))
                    for got, want in zip(jax.tree.leaves((logits, grads)),
                                         jax.tree.leaves((logits64, grads64)))]
  # Summation orders differ, so float32 rounding differs; oneDNN's stays within XLA's scale.
  assert max(errors["onednn"]) < max(3 * max(errors["xla"]), 1e-6)
  assert max(errors["onednn"]) < 1e-4


def test_bfloat16_convs_keep_the_other_forms_under_the_onednn_impl():
  x = jnp.ones((2, 8, 8, 16), jnp.bfloat16)
  w = jnp.ones((3, 3, 16, 16), jnp.bfloat16)

  def f(x, w):
    with layers.conv_impl("onednn"):
      return layers.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))

  assert onednn.TARGET not in str(jax.make_jaxpr(f)(x, w))


def test_a_training_run_under_the_onednn_impl_matches_xla(tmp_path):
  from cnn_jax import train

  finals = {}
  for impl in ("xla", "onednn"):
    config = load_config("lenet5_digits", total_steps=3, num_epochs=0, conv_impl=impl,
                         **{"data.batch_size": 16, "data.eval_batch_size": 150,
                            "schedule.name": "constant", "optimizer.learning_rate": 1e-3,
                            "checkpoint.best_metric": "", "mesh.num_devices": 1})
    finals[impl] = train.train_and_evaluate(config, str(tmp_path / impl))
  np.testing.assert_allclose(finals["onednn"]["loss"], finals["xla"]["loss"], rtol=1e-4)
  np.testing.assert_allclose(finals["onednn"]["accuracy"], finals["xla"]["accuracy"])


def test_turned_off_it_says_so_and_the_run_refuses_the_impl(monkeypatch, tmp_path):
  from cnn_jax import train
  from cnn_jax.errors import UserError

  monkeypatch.setenv(onednn.ENV, "0")
  assert onednn.unavailable_reason() == "turned off by CNN_JAX_ONEDNN=0"
  assert not onednn.may_autotune()
  with pytest.raises(UserError, match="conv_impl onednn cannot run here: turned off"):
    train.train_and_evaluate(load_config("lenet5_digits", conv_impl="onednn"),
                             str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  with pytest.raises(onednn.Unavailable, match="turned off"):
    onednn.conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), 1, ((1, 1), (1, 1)))


@pytest.mark.parametrize("spec,transpose_a,transpose_b", [
    ("bhmk,bhkn->bhmn", False, False),   # P v
    ("bhkm,bhkn->bhmn", True, False),    # Pᵀ dO: a read transposed
    ("bhmk,bhnk->bhmn", False, True),    # q kᵀ: b read transposed
    ("bhkm,bhnk->bhmn", True, True),
])
def test_batched_matmul_equals_xlas_dot_over_the_leading_axes(spec, transpose_a, transpose_b):
  m, k, n = 13, 9, 7  # Odd sizes: no kernel's favourite.
  a_shape = (2, 3, k, m) if transpose_a else (2, 3, m, k)
  b_shape = (2, 3, n, k) if transpose_b else (2, 3, k, n)
  a, b = normal(0, a_shape), normal(1, b_shape)
  got = jax.jit(lambda a, b: onednn.batched_matmul(a, b, transpose_a, transpose_b))(a, b)
  want = jnp.einsum(spec, a, b, precision="highest")
  assert got.shape == (2, 3, m, n)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.max(np.abs(want))))


def test_the_attention_with_its_backward_on_onednn_is_the_attention():
  """`layers.attention` under "onednn" (its backward's dots by oneDNN) against "xla" (the
  plain softmax attention): the same output and the same gradients of q, k and v."""
  b, heads, n, d = 2, 3, 17, 8
  q, k, v = (normal(seed, (b, heads, n, d)) for seed in (1, 2, 3))
  cotangent = normal(4, (b, n, heads, d))

  def value_and_grads(impl):
    with layers.conv_impl(impl):  # Read when the function is traced.
      return jax.jit(lambda q, k, v: jax.vjp(
          lambda q, k, v: layers.attention(q, k, v, d ** -0.5), q, k, v)[1](cotangent)
          + (layers.attention(q, k, v, d ** -0.5),))(q, k, v)

  jaxpr = str(jax.make_jaxpr(lambda q, k, v: jax.vjp(
      lambda q, k, v: layers.attention(q, k, v, 0.5), q, k, v)[1](cotangent))(q, k, v))
  with layers.conv_impl("onednn"):
    onednn_jaxpr = str(jax.make_jaxpr(lambda q, k, v: jax.vjp(
        lambda q, k, v: layers.attention(q, k, v, 0.5), q, k, v)[1](cotangent))(q, k, v))
  assert onednn.MATMUL_TARGET not in jaxpr
  assert onednn_jaxpr.count(onednn.MATMUL_TARGET) == 4  # dv, dweights, dq, dk
  got, want = value_and_grads("onednn"), value_and_grads("xla")
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-6 * float(np.max(np.abs(w))))


def test_without_a_compiler_the_build_says_so_in_one_line(monkeypatch, tmp_path):
  monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path))  # Nothing built here yet.
  monkeypatch.setenv("CXX", "no-such-compiler")
  with pytest.raises(onednn.Unavailable) as raised:
    onednn.library_path()
  assert str(raised.value) == "no C++ compiler ('no-such-compiler') to build onednn.cc"


def test_over_8_devices_with_a_sharded_batch_it_gives_the_values_of_one():
  # A custom call has no partitioning rule: XLA gathers the batch and runs it whole on each
  # device. Slower, so `auto` keeps it to one-device processes; the values must still hold.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  x = normal(0, (16, 8, 8, 4))
  w = normal(1, (3, 3, 4, 5))

  def loss(conv, x, w):
    return jnp.sum(jnp.sin(conv(x, w)))

  want = jax.jit(jax.value_and_grad(
      lambda x, w: loss(lambda x, w: _xla_conv(x, w, 1, ((1, 1), (1, 1))), x, w), (0, 1)))(x, w)
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  got = jax.jit(jax.value_and_grad(
      lambda x, w: loss(lambda x, w: onednn.conv(x, w, 1, ((1, 1), (1, 1))), x, w), (0, 1)))(
          sharded, w)
  assert len(got[1][0].sharding.device_set) == 8
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, rtol=0, atol=2e-6 * float(np.max(np.abs(r))))
