"""Layers shared by several families: DropPath, GRN, channels-last LayerNorm, PatchEmbed.

Everything is NHWC. Modes follow NNX: `model.train()` / `model.eval()` flip the
`deterministic` and `use_running_average` attributes of every nested layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator, Sequence
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


CONV_IMPLS = ("auto", "xla", "rewrite")
_conv_impl = contextvars.ContextVar("conv_impl", default="auto")


@contextlib.contextmanager
def conv_impl(impl: str) -> Iterator[None]:
  """Within the block, `conv_general_dilated` traces as `impl`: "auto" ("rewrite" on CPU, XLA's
  conv elsewhere), "xla" (always lax.conv_general_dilated) or "rewrite" (the cheaper forms below
  where a conv has one).

  `cnn_jax.summary` traces with "xla" so that MACs are counted from the conv equations."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl must be one of {CONV_IMPLS} (got {impl!r})")
  token = _conv_impl.set(impl)
  try:
    yield
  finally:
    _conv_impl.reset(token)


def _use_cpu_forms() -> bool:
  impl = _conv_impl.get()
  return impl == "rewrite" or (impl == "auto" and jax.default_backend() == "cpu")


def _depthwise_taps(padded: jax.Array, kh: int, kw: int, out_h: int, out_w: int
                    ) -> list[tuple[int, int, jax.Array]]:
  return [(i, j, padded[:, i:i + out_h, j:j + out_w, :]) for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_by_shifts(x: jax.Array, kernel: jax.Array,
                         padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """Stride-1 depthwise conv, NHWC x with an (kh, kw, 1, C) kernel, as kh*kw shifted
  multiply-adds: XLA:CPU runs a depthwise conv (and its gradients) as a generic grouped
  convolution, ~10x slower than these elementwise loops (fwd + bwd, 56 px / 96 channels).

  The gradient is written by hand, with `optimization_barrier`s where XLA would otherwise fuse
  the padding (or the producer of x) into each of the kh*kw taps and recompute it per tap."""
  return _depthwise_by_shifts_fwd(x, kernel, padding)[0]


def _depthwise_by_shifts_fwd(x, kernel, padding):
  (top, bottom), (left, right) = padding
  kh, kw = kernel.shape[:2]
  padded = jax.lax.optimization_barrier(
      jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))))
  out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
  out = None
  for i, j, tap in _depthwise_taps(padded, kh, kw, out_h, out_w):
    term = tap * kernel[i, j, 0]
    out = term if out is None else out + term
  return out, (padded, kernel)


def _depthwise_by_shifts_bwd(padding, residuals, dy):
  padded, kernel = residuals
  (top, bottom), (left, right) = padding
  kh, kw = kernel.shape[:2]
  out_h, out_w = dy.shape[1:3]
  in_h, in_w = padded.shape[1:3]

  # Image by image (lax.scan): over the whole batch XLA:CPU kept all kh*kw kernel-gradient
  # products alive at once (kh*kw activations of memory), and fused the input gradient's taps
  # through whole stages of FCMAE's masked residual stream into several consumers, computing
  # them again in each (optimization barriers do not survive to XLA:CPU's fusion pass; a loop
  # body's outputs do). Per image the operands stay in cache: 1.7-1.9x faster kernel gradient.
  # The barrier on `padded` keeps XLA from merging these taps with the forward's (without it
  # ConvNeXt-T's batch-32 step ran 4.25 s instead of 3.93 s).
  def one_image(d_kernel, image):
    padded_image, dy_image = image
    # d(padded): dy correlated with the flipped kernel ("full" padding), then cropped to x.
    dy_full = jnp.pad(dy_image, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    d_padded = None
    for i, j, tap in _depthwise_taps(dy_full, kh, kw, in_h, in_w):
      term = tap * kernel[kh - 1 - i, kw - 1 - j, 0]
      d_padded = term if d_padded is None else d_padded + term
    dx_image = d_padded[:, top:in_h - bottom, left:in_w - right, :]
    d_kernel = d_kernel + jnp.stack([
        jnp.sum(tap * dy_image, axis=(0, 1, 2), dtype=jnp.float32)
        for _, _, tap in _depthwise_taps(padded_image, kh, kw, out_h, out_w)])
    return d_kernel, dx_image

  d_kernel, dx = jax.lax.scan(
      one_image, jnp.zeros((kh * kw, dy.shape[-1]), jnp.float32),
      (jax.lax.optimization_barrier(padded)[:, None], dy[:, None]))
  dx = dx.reshape(dy.shape[0], *dx.shape[2:])
  return dx, d_kernel.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_by_shifts.defvjp(_depthwise_by_shifts_fwd, _depthwise_by_shifts_bwd)


def _patches_by_matmul(x: jax.Array, kernel: jax.Array, stride: int,
                       precision: Any) -> jax.Array:
  """Unpadded conv with a 1x1 kernel or a (k, k) kernel of stride k: the input pixels each
  output reads are disjoint, so it is a slice or reshape of x and one matmul. XLA:CPU lowers such
  convs (1x1 pointwise, strided 1x1 shortcuts, patchify stems, 2x2 downsampling) to a generic
  convolution whose weight gradient runs several times slower than the same matmul."""
  k = kernel.shape[0]
  n, h, w, c = x.shape
  out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
  if k == 1:
    patches = x[:, ::stride, ::stride, :]
  else:  # k == stride
    x = x[:, :out_h * k, :out_w * k, :].reshape(n, out_h, k, out_w, k, c)
    patches = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, out_h, out_w, k * k * c)
  weights = kernel.reshape(-1, kernel.shape[-1])  # HWIO -> (k*k*cin, cout), same order
  out = jnp.dot(patches.reshape(-1, weights.shape[0]), weights, precision=precision)
  return out.reshape(*patches.shape[:3], weights.shape[1])


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         precision: Any = None, **kwargs: Any) -> jax.Array:
  """`lax.conv_general_dilated`, except that under the "rewrite" impl (default on CPU) 2-D NHWC
  convs with a cheaper exact form take it: stride-1 depthwise convs as shifted multiply-adds,
  unpadded 1x1 convs (any stride) and k x k convs of stride k (patchify, downsampling) as
  one matmul.

  A drop-in for `nnx.Conv(conv_general_dilated=...)`: the parameters and the results are those
  of the XLA conv (equal to float rounding, tested); only the computation differs."""
  plain = (
      _use_cpu_forms() and lhs.ndim == 4 and kwargs.get("out_sharding") is None
      and kwargs.get("preferred_element_type") is None
      and all(d == 1 for d in (lhs_dilation or (1, 1)))
      and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and dimension_numbers is not None
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))
  if plain:
    pads = ([(0, 0), (0, 0)] if padding == "VALID"
            else None if isinstance(padding, str) else [tuple(p) for p in padding])
    channels = lhs.shape[-1]
    kh, kw = rhs.shape[:2]
    strides = tuple(window_strides)
    if (pads is not None and feature_group_count == channels > 1 and rhs.shape[2] == 1
        and rhs.shape[3] == channels and strides == (1, 1)):
      return _depthwise_by_shifts(lhs, rhs, tuple(pads))
    if (pads == [(0, 0), (0, 0)] and feature_group_count == 1 and kh == kw
        and strides[0] == strides[1] and (kh == 1 or strides[0] == kh)):
      return _patches_by_matmul(lhs, rhs, strides[0], precision)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, **kwargs)


def _window_taps(padded: jax.Array, window: int, stride: int) -> list[jax.Array]:
  """The window*window strided views of NHWC `padded`, one per window position, row-major."""
  out_h = (padded.shape[1] - window) // stride + 1
  out_w = (padded.shape[2] - window) // stride + 1
  return [padded[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_by_taps(padded: jax.Array, window: int, stride: int) -> jax.Array:
  return functools.reduce(jnp.maximum, _window_taps(padded, window, stride))


def _max_pool_by_taps_fwd(padded, window, stride):
  best, first = None, None
  for t, tap in enumerate(_window_taps(padded, window, stride)):
    if best is None:
      best, first = tap, jnp.zeros(tap.shape, jnp.int8)
    else:  # strict ">": the first maximum in row-major order wins, as in select-and-scatter
      first = jnp.where(tap > best, jnp.int8(t), first)
      best = jnp.maximum(best, tap)
  return best, (first, padded.shape)


def _max_pool_by_taps_bwd(window, stride, residuals, dy):
  first, padded_shape = residuals
  out_h, out_w = dy.shape[1:3]
  dx = None
  for t in range(window * window):
    i, j = divmod(t, window)
    # Place dy at this tap's input pixels: offset (i, j), stride - 1 zeros between outputs.
    config = [(0, 0, 0), (i, padded_shape[1] - i - stride * (out_h - 1) - 1, stride - 1),
              (j, padded_shape[2] - j - stride * (out_w - 1) - 1, stride - 1), (0, 0, 0)]
    term = jax.lax.pad(jnp.where(first == t, dy, jnp.zeros((), dy.dtype)),
                       jnp.zeros((), dy.dtype), config)
    dx = term if dx is None else dx + term
  return (dx,)


_max_pool_by_taps.defvjp(_max_pool_by_taps_fwd, _max_pool_by_taps_bwd)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """k x k max pooling of NHWC x (padding with -inf, as PyTorch's MaxPool2d).

  Under the "rewrite" conv impl (default on CPU) it is the maximum of k*k strided views with a
  gradient that routes each output's gradient to the first maximum of its window, exactly as
  XLA's select-and-scatter does (which XLA:CPU runs several times slower); values and gradients
  are identical (tested)."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  if not _use_cpu_forms():
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=pads[1:3])
  padded = jnp.pad(x, pads, constant_values=-jnp.inf) if padding else x
  return _max_pool_by_taps(padded, window, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _by_row_halves(fn, *arrays):
  return _by_row_halves_fwd(fn, *arrays)[0]


def _by_row_halves_fwd(fn, *arrays):
  half = arrays[0].shape[1] // 2

  def one_half(out, i):
    rows = [jax.lax.dynamic_slice_in_dim(a, i * half, half, axis=1) for a in arrays]
    return jax.lax.dynamic_update_slice_in_dim(out, fn(*rows), i * half, axis=1), None

  # Axis 1 (rows), not the batch: a batch sharded over devices would be gathered for the loop.
  out, _ = jax.lax.scan(one_half, jnp.zeros_like(arrays[0]), jnp.arange(2))
  return out, arrays


def _by_row_halves_bwd(fn, arrays, dy):
  return jax.vjp(fn, *arrays)[1](dy)


_by_row_halves.defvjp(_by_row_halves_fwd, _by_row_halves_bwd)


def computed_once(fn: Any, *arrays: jax.Array) -> jax.Array:
  """`fn(*arrays)` for an elementwise `fn` of same-shaped arrays (a block's residual add and
  activation), under the "rewrite" conv impl (default on CPU) computed in a two-iteration loop
  over the halves of axis 1: XLA:CPU cannot fuse a loop's result into its consumers.

  Without it, XLA:CPU fuses the cheap elementwise chain of a residual stream, x_{k+1} =
  act(x_k + bn(conv(...))), into every elementwise consumer of x_{k+1} (the next block's add,
  the activation's gradient mask, the transposed copy for the conv's kernel gradient, the
  option-A shortcut) and so recomputes each block's output from all the blocks before it in
  the stage, up to its code-duplication limit: work that grows as depth squared (ResNet-56's
  step cost 5x ResNet-20's for 3.1x the FLOPs). Values are those of `fn(*arrays)`; the
  gradient is `jax.vjp(fn, ...)` of the whole arrays, as without the loop (tested)."""
  x = arrays[0]
  if (not _use_cpu_forms() or x.ndim < 2 or x.shape[1] % 2
      or any(a.shape != x.shape or a.dtype != x.dtype for a in arrays)):
    return fn(*arrays)
  return _by_row_halves(fn, *arrays)


class Linear(nnx.Linear):
  """`nnx.Linear` (same parameters) over the last axis of an (..., C) array, computed on the
  array flattened to (rows, C): with the rows in several axes, XLA:CPU gives the weight-gradient
  dot a transposed copy of the output gradient (up to 27 % of a ResNet-50 train step);
  with one row axis it reads both operands as they are. Elsewhere the reshapes are free."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    rows = inputs.reshape(-1, inputs.shape[-1])
    return super().__call__(rows).reshape(*inputs.shape[:-1], self.out_features)


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
                         conv_general_dilated=conv_general_dilated,
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
