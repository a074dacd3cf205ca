"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), torchvision's single-tower variant.

"ImageNet Classification with Deep Convolutional Neural Networks", NeurIPS 2012.
torchvision follows Krizhevsky's "One weird trick" (2014) single-GPU layout rather than the
paper's two towers: convs 64-192-384-256-256 (paper: 96-256-384-384-256 split over two GPUs), no
local response normalisation, an adaptive average pool to 6x6, then dropout / 4096 / 4096 /
num_classes. With 1000 classes that is 61,100,840 parameters.

Submodule names follow the paper's layer numbering (conv1..conv5, fc6, fc7, fc8); torchvision's
`features.{0,3,6,8,10}` and `classifier.{1,4,6}` map onto them in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models.layers import (Activation, Dtype, conv2d, get_activation, max_pool,
                                   torch_default_bias_init, torch_default_kernel_init,
                                   torch_linear)
from cnn_jax.models.registry import register_model


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d on NHWC: bin i spans [floor(i*H/out), ceil((i+1)*H/out)).

  Bins may overlap or repeat pixels when H is not a multiple of out (or H < out), exactly as in
  torch, so converted weights see the same classifier input at any resolution.
  """
  h, w = x.shape[1:3]
  oh, ow = output_size
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    # Equal bins: one reshape-mean instead of oh*ow slices.
    return x.reshape(x.shape[0], oh, h // oh, ow, w // ow, x.shape[3]).mean(axis=(2, 4))

  def bins(n: int, out: int) -> list[tuple[int, int]]:
    return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]

  rows = [jnp.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in bins(w, ow)], axis=1)
          for r0, r1 in bins(h, oh)]
  return jnp.stack(rows, axis=1)


class AlexNet(nnx.Module):
  """torchvision AlexNet (single tower, 64-192-384-256-256, 4096-4096), NHWC in, logits out.

  `widths` (the five convs) and `hidden` (fc6/fc7) default to torchvision's; narrower nets
  serve as small test fixtures.

  Accepts any input of at least 63x63 (the smallest size for which the three 3x3/2 max pools
  still have a full window); the adaptive pool maps the last feature map to 6x6 (the identity
  at 224 px).
  """

  MIN_SIZE = 63

  def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
               activation: str = "relu", widths: Sequence[int] = (64, 192, 384, 256, 256),
               hidden: int = 4096, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.activation: Activation = get_activation(activation)
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    self.in_channels = in_channels
    if len(widths) != 5:
      raise ValueError(f"AlexNet has 5 convs; got widths {tuple(widths)}")
    self.num_features = widths[-1] * 6 * 6
    self.default_image_size = 224  # read by cnn_jax.summary

    def conv(cin: int, cout: int, k: int, stride: int, pad: int) -> nnx.Conv:
      return conv2d(cin, cout, k, stride, padding=pad, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(cin * k * k), dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)

    w1, w2, w3, w4, w5 = widths
    self.conv1 = conv(in_channels, w1, 11, 4, 2)
    self.conv2 = conv(w1, w2, 5, 1, 2)
    self.conv3 = conv(w2, w3, 3, 1, 1)
    self.conv4 = conv(w3, w4, 3, 1, 1)
    self.conv5 = conv(w4, w5, 3, 1, 1)
    lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.drop6 = nnx.Dropout(dropout, rngs=rngs)
    self.fc6 = torch_linear(self.num_features, hidden, **lin)
    self.drop7 = nnx.Dropout(dropout, rngs=rngs)
    self.fc7 = torch_linear(hidden, hidden, **lin)
    self.fc8 = torch_linear(hidden, num_classes, **lin)

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"AlexNet expects NHWC input with {self.in_channels} channels, "
                       f"got shape {x.shape}")
    h, w = x.shape[1:3]
    if min(h, w) < self.MIN_SIZE:
      raise ValueError(f"AlexNet needs images of at least {self.MIN_SIZE}x{self.MIN_SIZE} "
                       f"pixels, got {h}x{w}")

  def forward_features(self, x: jax.Array) -> jax.Array:
    """Last conv feature map after the third max pool (NHWC, 6x6 at 224 px)."""
    self._check_input(x)
    act = self.activation

    def pool(y: jax.Array) -> jax.Array:
      return max_pool(y, 3, 2)

    x = pool(act(self.conv1(x)))
    x = pool(act(self.conv2(x)))
    x = act(self.conv3(x))
    x = act(self.conv4(x))
    return pool(act(self.conv5(x)))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = adaptive_avg_pool(self.forward_features(x), (6, 6))
    # Flatten in torch's (C, H, W) order so a converted fc6 weight needs only a transpose.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = self.activation(self.fc6(self.drop6(x)))
    x = self.activation(self.fc7(self.drop7(x)))
    return self.fc8(x)


@register_model
def alexnet(*, rngs: nnx.Rngs, **kwargs) -> AlexNet:
  """AlexNet, torchvision layout: 61,100,840 parameters at 1000 classes."""
  return AlexNet(rngs=rngs, **kwargs)
