"""Layers shared by several families: DropPath, GRN, channels-last LayerNorm, PatchEmbed.

Everything is NHWC. Modes follow NNX: `model.train()` / `model.eval()` flip the
`deterministic` and `use_running_average` attributes of every nested layer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = Any

# Standard deviation of a unit normal truncated to [-2, 2]: flax's truncated_normal(stddev)
# samples a normal of that stddev cut at +-2 stddev, whose spread is ~12% smaller.
_TRUNCATED_UNIT_STD = 0.87962566103423978


def trunc_normal(std: float = 0.02) -> nnx.Initializer:
  """timm's trunc_normal_(std=.02): a normal of the given std, cut far out in the tails.

  timm cuts at +-2 absolute (100 std at 0.02, i.e. not at all); cutting at +-2 std while
  rescaling to keep the std exact is the JAX convention (as in variance_scaling)."""
  return nnx.initializers.truncated_normal(stddev=std / _TRUNCATED_UNIT_STD)


class DropPath(nnx.Module):
  """Stochastic depth: drops the whole residual branch per sample, rescales the survivors.

  Mirrors `nnx.Dropout` (same rng stream handling, same `deterministic` switch), so
  `model.eval()` turns it into the identity.
  """

  def __init__(self, rate: float, *, deterministic: bool = False,
               rng_collection: str = "dropout", rngs: nnx.Rngs | None = None):
    self.rate = float(rate)
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    if rngs is None or self.rate == 0.0:
      self.rngs = nnx.data(None)
    else:
      self.rngs = rngs[rng_collection].fork()

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    if self.rngs is None:
      raise ValueError("DropPath with rate > 0 in train mode needs rngs at construction")
    keep_prob = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.rngs(), keep_prob, shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


class GRN(nnx.Module):
  """Global Response Normalization (ConvNeXt V2), channels-last.

  gx = ||x||_2 over (H, W) per channel; nx = gx / (mean_c gx + eps);
  out = gamma * (x * nx) + beta + x, with gamma = beta = 0 at init.

  Under FCMAE the masked positions of x are zero, so the spatial norm counts only the
  visible positions, as the sparse encoder does.
  """

  def __init__(self, channels: int, *, eps: float = 1e-6, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs
    self.eps = eps
    self.dtype = dtype
    self.gamma = nnx.Param(jnp.zeros((channels,), param_dtype))
    self.beta = nnx.Param(jnp.zeros((channels,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    # The norm's reduction runs in float32: a bf16 sum of squares over 56x56 loses digits.
    gx = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(1, 2), keepdims=True))
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + self.eps)
    gamma = self.gamma.value.astype(dtype)
    beta = self.beta.value.astype(dtype)
    return gamma * (x * nx.astype(dtype)) + beta + x


def layer_norm(channels: int, *, eps: float = 1e-6, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the channel (last) axis of NHWC or NLC tensors, ConvNeXt/ViT style."""
  return nnx.LayerNorm(channels, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class PatchEmbed(nnx.Module):
  """Non-overlapping patchify: a conv with kernel = stride = patch size (ConvNeXt stem, ViT).

  Returns NHWC feature maps; ViT flattens them itself.
  """

  def __init__(self, in_channels: int, embed_dim: int, patch_size: int, *,
               use_bias: bool = True, kernel_init: nnx.Initializer | None = None,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.patch_size = patch_size
    kwargs = {} if kernel_init is None else {"kernel_init": kernel_init}
    self.proj = nnx.Conv(in_channels, embed_dim, (patch_size, patch_size),
                         strides=(patch_size, patch_size), padding="VALID", use_bias=use_bias,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kwargs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h, w = x.shape[1:3]
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(
          f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
    return self.proj(x)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param leaves), as torchvision/timm count them."""
  return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
