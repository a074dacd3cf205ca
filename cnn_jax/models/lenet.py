"""LeNet-5 (LeCun et al. 1998), modern variant.

C1 6@5x5 -> act -> pool -> C3 16@5x5 (fully connected, no partial table) -> act -> pool
-> C5 120 -> F6 84 -> Linear 10, on 1x32x32 inputs: 61,706 parameters.
"Modern" = max pooling, ReLU and a plain softmax head in place of the subsampling layers,
scaled tanh and RBF output of the paper; the activation is configurable for the activation
experiments (any name of `layers.ACTIVATIONS`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models import layers
from cnn_jax.models.layers import Dtype, get_activation
from cnn_jax.models.registry import register_model


class LeNet5(nnx.Module):
  """LeNet-5 for 32x32 inputs (28x28 digits are padded by 2, as in the paper)."""

  def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 32,
               activation: str = "relu", pool: str = "max", dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.activation = get_activation(activation)
    if image_size < 28 or (image_size - 4) % 2 or ((image_size - 4) // 2 - 4) % 2:
      raise ValueError(f"LeNet-5 needs image_size 28 or 32 (got {image_size})")
    self.pool = pool
    # ReLU commutes with max pooling, values and gradients alike (the first maximum of a window
    # stays the first; a window with no positive value gets no gradient either way), so it runs
    # on the pooled map, a quarter of the pixels.
    self.pool_first = pool == "max" and activation == "relu"
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # Through `layers`' conv and max pool, so they take the CPU forms where those run faster.
    conv = dict(padding="VALID", conv_general_dilated=layers.conv_general_dilated, **kw)
    self.c1 = nnx.Conv(in_channels, 6, (5, 5), **conv)
    self.c3 = nnx.Conv(6, 16, (5, 5), **conv)
    side = ((image_size - 4) // 2 - 4) // 2
    self.c5 = nnx.Linear(16 * side * side, 120, **kw)
    self.f6 = nnx.Linear(120, 84, **kw)
    self.head = nnx.Linear(84, num_classes, **kw)

  def _pool(self, x: jax.Array) -> jax.Array:
    if self.pool == "max":
      return layers.max_pool(x, 2, 2)
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))

  def __call__(self, x: jax.Array) -> jax.Array:
    act = self.activation
    for conv in (self.c1, self.c3):
      x = act(self._pool(conv(x))) if self.pool_first else self._pool(act(conv(x)))
    x = x.reshape(x.shape[0], -1)
    x = act(self.c5(x))
    x = act(self.f6(x))
    return self.head(x)


@register_model
def lenet5(*, rngs: nnx.Rngs, **kwargs) -> LeNet5:
  return LeNet5(rngs=rngs, **kwargs)
