"""AlexNet (torchvision's single-tower layout, cnn_jax/models/alexnet.py): size, shapes, the
adaptive pool, options, modes.

Built abstractly (nnx.eval_shape) and traced with jax.eval_shape: no 61M-parameter init.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax.errors import UserError
from cnn_jax.models import get_constructor, list_models
from cnn_jax.models.alexnet import adaptive_avg_pool
from cnn_jax.models.layers import ACTIVATIONS, count_params
from helpers import abstract_apply, abstract_model

# torchvision's own count (and REFERENCE.md).
ALEXNET_PARAMS = 61_100_840


@functools.lru_cache(maxsize=None)
def abstract(name: str = "alexnet", **kwargs) -> nnx.Module:
  return abstract_model(name, **kwargs)


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def test_registered():
  assert "alexnet" in list_models()


def test_param_count():
  assert count_params(abstract()) == ALEXNET_PARAMS


def test_output_shape_at_224():
  out = abstract_apply(abstract(), (2, 224, 224, 3))
  assert out.shape == (2, 1000) and out.dtype == jnp.float32


def test_other_sizes():
  model = abstract(num_classes=10, in_channels=1)
  assert abstract_apply(model, (1, 63, 63, 1)).shape == (1, 10)
  assert abstract_apply(model, (1, 256, 320, 1)).shape == (1, 10)
  assert abstract_apply(abstract(), (1, 224, 224, 3),
                        method="forward_features").shape == (1, 6, 6, 256)


@pytest.mark.parametrize("size,out", [((6, 6), (6, 6)), ((12, 18), (6, 6)), ((13, 7), (6, 6)),
                                      ((2, 3), (6, 6))])
def test_adaptive_avg_pool_matches_torch_bins(size, out):
  x = images((2, *size, 3))
  h, w = size
  oh, ow = out
  expected = np.zeros((2, oh, ow, 3), np.float32)
  for i in range(oh):
    for j in range(ow):
      # torch: start = floor(i * in / out), end = ceil((i + 1) * in / out).
      r0, r1 = (i * h) // oh, int(np.ceil((i + 1) * h / oh))
      c0, c1 = (j * w) // ow, int(np.ceil((j + 1) * w / ow))
      expected[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  pooled = jax.jit(adaptive_avg_pool, static_argnums=1)(jnp.asarray(x), out)
  np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [
    (1, 62, 62, 3),
    (224, 224, 3),            # no batch axis
])
def test_bad_input_raises_value_error(shape):
  with pytest.raises(ValueError, match="image size|expects NHWC|at least"):
    abstract_apply(abstract(), shape)


@pytest.mark.parametrize("kwargs", [{"activation": "swish"}, {"dropout": 1.0}])
def test_bad_options_raise_value_error(kwargs):
  with pytest.raises(ValueError):
    nnx.eval_shape(lambda: get_constructor("alexnet")(rngs=nnx.Rngs(0), **kwargs))
  # Through the registry they become one-line user errors.
  with pytest.raises(UserError, match="alexnet"):
    abstract(**kwargs)


def test_bfloat16_compute_float32_params():
  model = abstract(dtype=jnp.bfloat16)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
  y = abstract_apply(model, (2, 224, 224, 3))
  assert y.dtype == jnp.bfloat16 and y.shape == (2, 1000)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "gelu", "gelu_tanh"])
def test_activation_option(act):
  assert abstract(activation=act).activation is ACTIVATIONS[act]


def test_dropout_option_and_modes():
  model = abstract(dropout=0.3)
  assert model.drop6.rate == model.drop7.rate == 0.3
  assert abstract().drop6.rate == 0.5
  assert not model.drop6.deterministic
  model.eval()
  assert model.drop6.deterministic and model.drop7.deterministic
  model.train()
  assert not model.drop7.deterministic
