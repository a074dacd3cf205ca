"""cnn_jax/models/layers.py: the activation table's names, the exact GELU's recomputed gradient,
the PyTorch-padded conv, the LayerNorm, BatchNorm and attention forms."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals
from jax.scipy.special import erf

from cnn_jax.models import create_model
from cnn_jax.models import layers
from cnn_jax.models.layers import ACTIVATIONS, conv2d, get_activation
from helpers import normal


def test_gelu_is_the_exact_erf_form_and_gelu_tanh_the_approximation():
  x = jnp.linspace(-4.0, 4.0, 801)
  exact = 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
  approx = 0.5 * x * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
  np.testing.assert_allclose(ACTIVATIONS["gelu"](x), exact, rtol=0, atol=1e-6)
  np.testing.assert_allclose(ACTIVATIONS["gelu_tanh"](x), approx, rtol=0, atol=1e-6)
  # The two differ by up to ~5e-4: enough to tell which one a model uses.
  assert float(np.max(np.abs(exact - approx))) > 4e-4


def _plain_gelu(x):
  return nnx.gelu(x, approximate=False)


@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_gelu_values_and_gradient_are_the_plain_exact_gelus(impl):
  # Inside a reduction and times a weight, as in a ConvNeXt V2 block (GRN's sum of squares).
  x = 3.0 * normal(0, (4, 6, 6, 16))
  w = normal(1, (16,))

  def loss(act, x):
    y = act(x)
    return jnp.sum(jnp.sqrt(jnp.sum(y * y, axis=(1, 2))) * w) + jnp.sum(y * w)

  with layers.conv_impl(impl):
    value, grad = jax.jit(jax.value_and_grad(lambda x: loss(ACTIVATIONS["gelu"], x)))(x)
  want_value, want_grad = jax.jit(jax.value_and_grad(lambda x: loss(_plain_gelu, x)))(x)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
  assert float(np.max(np.abs(grad))) > 0.1


def test_gelu_gradient_keeps_only_its_input_on_cpu(capsys):
  # What the backward keeps is what the forward must write: erfc and exp kept would be passes
  # of their own over the activation on XLA:CPU.
  x = jnp.ones((2, 8))
  with layers.conv_impl("auto"):
    print_saved_residuals(ACTIVATIONS["gelu"], x)
  kept = capsys.readouterr().out.strip().splitlines()
  assert kept == ["f32[2,8] from the argument x"]
  with layers.conv_impl("xla"):  # The plain program elsewhere, as XLA's own op there.
    print_saved_residuals(ACTIVATIONS["gelu"], x)
  assert "erfc" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "alexnet"])
def test_every_family_takes_its_activation_from_the_one_table(name):
  for act in ("gelu", "gelu_tanh"):
    model = nnx.eval_shape(lambda a=act: create_model(name, activation=a, rngs=nnx.Rngs(0)))
    fn = model.activation if hasattr(model, "activation") else model.stem.act
    assert fn is ACTIVATIONS[act]


def test_unknown_activation_names_the_choices():
  with pytest.raises(ValueError, match="unknown activation 'swish'.*gelu_tanh"):
    get_activation("swish")


def test_conv2d_pads_like_pytorch_not_like_same():
  x = normal(0, (1, 8, 8, 2))
  conv = conv2d(2, 3, 3, 2, dtype=None, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  assert conv.padding == ((1, 1), (1, 1))
  torch_like = jax.lax.conv_general_dilated(x, conv.kernel[...], (2, 2), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv(x), torch_like + conv.bias[...], rtol=1e-5, atol=1e-5)
  # flax's 'SAME' pads (0, 1) here: every output pixel would move by one input pixel.
  same = jax.lax.conv_general_dilated(x, conv.kernel[...], (2, 2), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert not np.allclose(torch_like, same, atol=1e-3)
  assert conv2d(2, 3, 2, 2, padding=0, dtype=None, param_dtype=jnp.float32,
                rngs=nnx.Rngs(0)).padding == ((0, 0), (0, 0))


def _with_params(layer, scale, bias):
  layer.scale[...] = scale
  layer.bias[...] = bias
  return layer


def _norm_inputs(shape):
  """x off-centre per channel (so the mean term matters), a scale, a bias and loss weights."""
  channels = shape[-1]
  return (2.0 + 3.0 * normal(0, shape), 1.0 + normal(1, (channels,)), normal(2, (channels,)),
          normal(3, shape))


@pytest.mark.parametrize("impl", ["auto", "xla"])
@pytest.mark.parametrize("shape", [(3, 7, 16), (2, 5, 5, 24)])  # ViT tokens; ConvNeXt NHWC
def test_layer_norm_values_and_all_gradients_are_nnx_layer_norms(impl, shape):
  x, scale, bias, w = _norm_inputs(shape)
  channels = shape[-1]

  def loss(make, x, scale, bias):
    y = _with_params(make(channels, epsilon=1e-6, rngs=nnx.Rngs(0)), scale, bias)(x)
    return jnp.sum(jnp.tanh(y) * w)

  with layers.conv_impl(impl):
    value, grads = jax.jit(jax.value_and_grad(
        lambda *a: loss(layers.LayerNorm, *a), argnums=(0, 1, 2)))(x, scale, bias)
  want_value, want_grads = jax.jit(jax.value_and_grad(
      lambda *a: loss(nnx.LayerNorm, *a), argnums=(0, 1, 2)))(x, scale, bias)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for grad, want in zip(grads, want_grads):
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=2e-5 * float(np.max(np.abs(want))))
    assert float(np.max(np.abs(want))) > 0.1


def test_layer_norm_outside_float32_is_nnx_layer_norm():
  x = normal(0, (2, 3, 8), jnp.bfloat16)
  ours = layers.layer_norm(8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  theirs = nnx.LayerNorm(8, epsilon=1e-6, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  with layers.conv_impl("auto"):
    assert ours(x).dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(ours(x), np.float32),
                                  np.asarray(theirs(x), np.float32))


def _full_size_residuals(fn, *args, size):
  """How many arrays of `size` elements the backward of `fn` keeps, and the list it printed."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    print_saved_residuals(fn, *args)
  kept = out.getvalue().strip().splitlines()
  shapes = [line.split(" ", 1)[0] for line in kept]
  sizes = [int(np.prod([int(d) for d in s[s.index("[") + 1:-1].split(",") if d] or [1]))
           for s in shapes]
  return sizes.count(size), kept


def test_layer_norm_gradient_keeps_only_x_and_row_statistics_on_cpu():
  # Each full-size array the backward keeps is one the forward must write out: nnx's form kept
  # x - mean and rsqrt(var) * scale broadcast to every element, among others.
  x = jnp.ones((2, 3, 8))

  def norm(x):
    return layers.layer_norm(8, rngs=nnx.Rngs(0))(x)

  with layers.conv_impl("auto"):
    full, kept = _full_size_residuals(norm, x, size=x.size)
  assert full == 1 and "from the argument x" in "\n".join(kept)
  assert sum("f32[2,3,1]" in line for line in kept) == 2  # mean and 1/std per row
  with layers.conv_impl("xla"):  # the plain program elsewhere
    full, _ = _full_size_residuals(norm, x, size=x.size)
  assert full > 1


@pytest.mark.parametrize("impl", ["auto", "xla"])
@pytest.mark.parametrize("shape", [(4, 5, 5, 24), (12, 16)])  # NHWC maps; a head's (N, C)
def test_batch_norm_values_gradients_and_statistics_are_nnx_batch_norms(impl, shape):
  x, scale, bias, w = _norm_inputs(shape)
  channels = shape[-1]

  def run(make, x, scale, bias):
    norm = _with_params(make(channels, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0)),
                        scale, bias)
    y = norm(x, use_running_average=False)
    return jnp.sum(jnp.tanh(y) * w), (norm.mean[...], norm.var[...],
                                      norm(x, use_running_average=True))

  def step(make):
    return jax.jit(jax.value_and_grad(lambda *a: run(make, *a), argnums=(0, 1, 2),
                                      has_aux=True))(x, scale, bias)

  with layers.conv_impl(impl):
    (value, kept), grads = step(layers.BatchNorm)
  (want_value, want_kept), want_grads = step(nnx.BatchNorm)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  # The running mean and variance, and the evaluation with them afterwards.
  for got, want in zip(kept, want_kept):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for grad, want in zip(grads, want_grads):
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=2e-5 * float(np.max(np.abs(want))))
    assert float(np.max(np.abs(want))) > 0.1


def test_batch_norm_gradient_keeps_only_x_and_channel_statistics_on_cpu():
  # nnx's form, differentiated, kept x - mean and the normalised x at full size as well.
  x = jnp.ones((2, 3, 3, 8))

  def norm(x):
    return layers.BatchNorm(8, use_running_average=False, rngs=nnx.Rngs(0))(x)

  with layers.conv_impl("auto"):
    full, kept = _full_size_residuals(norm, x, size=x.size)
  assert full == 1 and "from the argument x" in "\n".join(kept)
  assert sum("f32[8]" in line for line in kept) == 3  # mean, 1/std and the scale per channel
  with layers.conv_impl("xla"):
    full, _ = _full_size_residuals(norm, x, size=x.size)
  assert full > 1


def _plain_attention(q, k, v, scale):
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k)
  return jnp.einsum("bhqk,bhkd->bqhd", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_attention_values_and_gradients_are_the_plain_softmax_attentions(impl):
  q, k, v = (2.0 * normal(seed, (2, 3, 9, 4)) for seed in (0, 2, 3))
  w = normal(1, (2, 9, 3, 4))

  def loss(attend, q, k, v):
    return jnp.sum(jnp.tanh(attend(q, k, v, 0.5)) * w)

  with layers.conv_impl(impl):
    value, grads = jax.jit(jax.value_and_grad(
        lambda *a: loss(layers.attention, *a), argnums=(0, 1, 2)))(q, k, v)
  want_value, want_grads = jax.jit(jax.value_and_grad(
      lambda *a: loss(_plain_attention, *a), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for grad, want in zip(grads, want_grads):
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=2e-5 * float(np.max(np.abs(want))))
    assert float(np.max(np.abs(want))) > 0.05


def test_attention_gradient_keeps_one_token_by_token_array_on_cpu():
  # The plain softmax's backward kept its exponentials and its normalised weights, both
  # (B, heads, N, N), which XLA:CPU wrote out and read back in passes of their own.
  q = jnp.ones((2, 3, 5, 4))
  with layers.conv_impl("auto"):
    full, _ = _full_size_residuals(lambda q, k, v: layers.attention(q, k, v, 0.5), q, q, q,
                                   size=2 * 3 * 5 * 5)
  assert full == 1
  with layers.conv_impl("xla"):
    full, _ = _full_size_residuals(lambda q, k, v: layers.attention(q, k, v, 0.5), q, q, q,
                                   size=2 * 3 * 5 * 5)
  assert full == 2


def test_attention_with_dropout_takes_the_plain_form():
  q = jnp.ones((1, 1, 3, 2))
  dropped = []

  def dropout(weights):
    dropped.append(weights.shape)
    return weights

  with layers.conv_impl("auto"):
    np.testing.assert_allclose(layers.attention(q, q, q, 1.0, dropout), jnp.ones((1, 3, 1, 2)))
  assert dropped == [(1, 1, 3, 3)]
