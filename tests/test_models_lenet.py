import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from cnn_jax.errors import UserError
from cnn_jax.models import create_model, list_models
from cnn_jax.models.layers import count_params


def test_lenet5_has_exactly_61706_parameters():
  model = create_model("lenet5", rngs=nnx.Rngs(0))
  assert count_params(model) == 61_706


def test_lenet5_output_shape_and_28px_variant():
  model = create_model("lenet5", num_classes=7, rngs=nnx.Rngs(0))
  assert model(jnp.zeros((3, 32, 32, 1))).shape == (3, 7)
  small = create_model("lenet5", image_size=28, rngs=nnx.Rngs(0))
  assert small(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
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
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 1))

  def loss(params):
    return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

  grads = jax.grad(loss)(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
