"""cnn_jax/models/layers.py: the activation table's names, the exact GELU's recomputed gradient
and the PyTorch-padded conv."""

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


def test_gelu_is_the_exact_erf_form_and_gelu_tanh_the_approximation():
  x = jnp.linspace(-4.0, 4.0, 801)
  exact = 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
  approx = 0.5 * x * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
  np.testing.assert_allclose(ACTIVATIONS["gelu"](x), exact, rtol=0, atol=1e-6)
  np.testing.assert_allclose(ACTIVATIONS["gelu_tanh"](x), approx, rtol=0, atol=1e-6)
  # The two differ by up to ~5e-4: enough to tell which one a model uses.
  assert float(jnp.max(jnp.abs(exact - approx))) > 4e-4


def _plain_gelu(x):
  return nnx.gelu(x, approximate=False)


@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_gelu_values_and_gradient_are_the_plain_exact_gelus(impl):
  # Inside a reduction and times a weight, as in a ConvNeXt V2 block (GRN's sum of squares).
  x = 3.0 * jax.random.normal(jax.random.key(0), (4, 6, 6, 16))
  w = jax.random.normal(jax.random.key(1), (16,))

  def loss(act, x):
    y = act(x)
    return jnp.sum(jnp.sqrt(jnp.sum(y * y, axis=(1, 2))) * w) + jnp.sum(y * w)

  with layers.conv_impl(impl):
    value, grad = jax.jit(jax.value_and_grad(lambda x: loss(ACTIVATIONS["gelu"], x)))(x)
  want_value, want_grad = jax.jit(jax.value_and_grad(lambda x: loss(_plain_gelu, x)))(x)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(grad))) > 0.1


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
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 2))
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
