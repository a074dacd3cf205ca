import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cnn_jax.errors import UserError
from cnn_jax.models import create_model, list_models
from cnn_jax.models.layers import count_params
from helpers import abstract_apply, abstract_model, normal


def test_lenet5_has_exactly_61706_parameters():
  model = create_model("lenet5", rngs=nnx.Rngs(0))
  assert count_params(model) == 61_706


def test_lenet5_output_shape_and_28px_variant():
  # Shapes and counts by tracing alone (nnx.eval_shape, jax.eval_shape): nothing to compile.
  model = abstract_model("lenet5", num_classes=7)
  assert abstract_apply(model, (3, 32, 32, 1)).shape == (3, 7)
  small = abstract_model("lenet5", image_size=28)
  assert abstract_apply(small, (2, 28, 28, 1)).shape == (2, 10)
  # 7 classes: 3 fewer head rows of 84 weights + 1 bias.
  assert count_params(model) == 61_706 - 3 * 85
  # 28 px leaves a 4x4 map before C5 instead of 5x5: 16 * (25 - 16) * 120 fewer weights.
  assert count_params(small) == 61_706 - 16 * 9 * 120


def test_unknown_model_names_close_matches():
  with pytest.raises(UserError, match="did you mean lenet5"):
    create_model("lenet6", rngs=nnx.Rngs(0))
  assert "lenet5" in list_models()


def test_bad_option_is_a_user_error():
  with pytest.raises(UserError, match="image_size"):
    create_model("lenet5", image_size=20, rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match="unexpected keyword"):
    create_model("lenet5", widht=3, rngs=nnx.Rngs(0))


def test_lenet5_gradients_reach_every_parameter():
  model = create_model("lenet5", rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  x = normal(1, (4, 32, 32, 1))

  def loss(params):
    return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

  grads = jax.jit(jax.grad(loss))(params)  # one compile, not one per op
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("impl", ["xla", "rewrite"])
def test_lenet5_pooling_before_relu_gives_the_values_and_gradients_of_relu_then_pool(impl):
  """The model applies ReLU after each max pool (they commute); the reference is the paper's
  order, conv -> ReLU -> pool, with XLA's ops. Rounded inputs give windows of tied maxima."""
  import numpy as np
  from cnn_jax.models import layers

  model = create_model("lenet5", in_channels=1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  x = jnp.round(2 * normal(1, (4, 32, 32, 1))) / 2

  def reference(model, x):
    for conv in (model.c1, model.c3):
      x = nnx.max_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
    x = jax.nn.relu(model.c5(x.reshape(x.shape[0], -1)))
    return model.head(jax.nn.relu(model.f6(x)))

  def loss(params, forward):
    with layers.conv_impl(impl if forward is None else "xla"):
      m = nnx.merge(graphdef, params)
      logits = m(x) if forward is None else forward(m, x)
    return jnp.sum(jnp.sin(logits)), logits

  # Jitted: one compile per program, not one per op.
  grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, logits), grads = grad_fn(params, None)
  (_, logits_ref), grads_ref = grad_fn(params, reference)
  np.testing.assert_allclose(logits, logits_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.max(np.abs(want))))
