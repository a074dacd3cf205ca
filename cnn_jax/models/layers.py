"""The one home of the building blocks several families share: the activation table, the
PyTorch-padded conv and torch-initialised linear layer, the conv / max-pool entry points that
pick XLA's op or an exact CPU form (`cpu_ops`), Linear, DropPath, GRN, channels-last
LayerNorm, PatchEmbed.

Everything is NHWC. Modes follow NNX: `model.train()` / `model.eval()` flip the
`deterministic` and `use_running_average` attributes of every nested layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models import autotune, cpu_ops, onednn

Dtype = Any
Activation = Callable[[jax.Array], jax.Array]

_exact_gelu = functools.partial(nnx.gelu, approximate=False)


@jax.checkpoint
def _exact_gelu_through_erf_recomputed(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + jax.lax.erf(x * 0.7071067811865476))


def gelu(x: jax.Array) -> jax.Array:
  """The exact GELU, PyTorch's nn.GELU. Under the CPU forms (`conv_impl`) two things differ
  from `jax.nn.gelu(approximate=False)`, both for XLA:CPU's sake (experiments/cpu_speed):
  - it is written as PyTorch writes it, x/2 (1 + erf(x / sqrt 2)): jax's erfc compiles to a
    branchy kernel, erf to a vectorised polynomial;
  - its gradient recomputes erf and exp(-x^2 / 2) from x (`jax.checkpoint`), as PyTorch's
    gelu_backward does, instead of keeping them: kept, XLA:CPU wrote each in a pass of its own
    over the activation before the pass that writes the GELU (a ConvNeXt V2 block's largest
    elementwise cost).
  Same function and derivative; float32 rounding differs (tested)."""
  return _exact_gelu_through_erf_recomputed(x) if _use_cpu_forms() else _exact_gelu(x)


# Names a config gives `activation`. "gelu" is the exact (erf) form, PyTorch's nn.GELU default
# and what ConvNeXt and ViT use (converted weights would drift under the approximation);
# "gelu_tanh" is the tanh approximation (nn.GELU(approximate="tanh"), jax's default).
ACTIVATIONS: dict[str, Activation] = {
    "relu": nnx.relu,
    "tanh": jnp.tanh,
    "sigmoid": nnx.sigmoid,
    "gelu": gelu,
    "gelu_tanh": functools.partial(nnx.gelu, approximate=True),
}


def get_activation(name: str) -> Activation:
  """The activation function called `name` in ACTIVATIONS; ValueError naming the choices."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


# Standard deviation of a unit normal truncated to [-2, 2]: flax's truncated_normal(stddev)
# samples a normal of that stddev cut at +-2 stddev, whose spread is ~12% smaller.
_TRUNCATED_UNIT_STD = 0.87962566103423978


def trunc_normal(std: float = 0.02) -> nnx.Initializer:
  """timm's trunc_normal_(std=.02): a normal of the given std, cut far out in the tails.

  timm cuts at +-2 absolute (100 std at 0.02, i.e. not at all); cutting at +-2 std while
  rescaling to keep the std exact is the JAX convention (as in variance_scaling)."""
  return nnx.initializers.truncated_normal(stddev=std / _TRUNCATED_UNIT_STD)


CONV_IMPLS = ("auto", "xla", "rewrite", "onednn")
_conv_impl = contextvars.ContextVar("conv_impl", default="auto")


@contextlib.contextmanager
def conv_impl(impl: str) -> Iterator[None]:
  """Within the block, `conv_general_dilated` and `max_pool` trace as `impl`: "xla" (always
  XLA's op), "rewrite" (the exact CPU forms of `cpu_ops` where an op has one), "onednn"
  (oneDNN's conv for every float32 NHWC conv, `onednn.applies`, and oneDNN's matmul for the
  float32 attention's backward; the CPU forms for the rest) or
  "auto" (XLA's op off CPU; on CPU, per op shape, whichever form `autotune` measured fastest on
  this CPU model, once, cached).

  `cnn_jax.summary` traces with "xla" so that MACs are counted from the conv equations."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl must be one of {CONV_IMPLS} (got {impl!r})")
  token = _conv_impl.set(impl)
  try:
    yield
  finally:
    _conv_impl.reset(token)


def _use_cpu_forms() -> bool:
  """Whether the forms of `cpu_ops` (and `computed_once`) may replace XLA's ops: under
  "rewrite" and "onednn", and under "auto" on CPU (where `_dispatch` then asks the autotune per
  op)."""
  impl = _conv_impl.get()
  return impl in ("rewrite", "onednn") or (impl == "auto" and jax.default_backend() == "cpu")


def _dispatch(description: str, cpu_form: Callable[..., jax.Array],
              xla_op: Callable[..., jax.Array], *operands: jax.Array,
              onednn_form: Callable[..., jax.Array] | None = None) -> jax.Array:
  """The one rule for an op that has a CPU form (and, for the convs oneDNN takes, oneDNN's):
  the CPU form under "rewrite", oneDNN's under "onednn" where given (else the CPU form), XLA's op
  under "xla" and off CPU, and under "auto" on CPU the ones `autotune` chose for this CPU model
  and shape, one for the forward where nothing differentiates the op and one for forward and
  backward."""
  if not _use_cpu_forms():
    return xla_op(*operands)
  impl = _conv_impl.get()
  if impl == "onednn" and onednn_form is not None:
    return onednn_form(*operands)
  if impl in ("rewrite", "onednn"):
    return cpu_form(*operands)
  forms = {"rewrite": cpu_form, "xla": xla_op}
  # Built (once, on first use) only where it will be timed.
  if onednn_form is not None and autotune.enabled() and onednn.may_autotune():
    forms["onednn"] = onednn_form
  choice = autotune.choose(description, forms, operands)
  if choice.forward == choice.gradient:
    return forms[choice.forward](*operands)
  return _forward_and_gradient_by(forms[choice.forward], forms[choice.gradient], *operands)


def _forward_and_gradient_by(forward: Callable[..., jax.Array],
                             differentiated: Callable[..., jax.Array],
                             *operands: jax.Array) -> jax.Array:
  """`forward(*operands)` where nothing differentiates it; under differentiation the forward
  and backward of `differentiated` (the same function, computed otherwise)."""
  op = jax.custom_vjp(lambda *xs: forward(*xs))
  op.defvjp(lambda *xs: jax.vjp(differentiated, *xs), lambda vjp, dy: vjp(dy))
  return op(*operands)


def _shape(x: jax.Array) -> str:
  return f"{'x'.join(map(str, x.shape))} {x.dtype}"


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: Any, lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         precision: Any = None, **kwargs: Any) -> jax.Array:
  """`lax.conv_general_dilated`, except that the 2-D NHWC convs with a cheaper exact form in
  `cpu_ops` take it under "rewrite", and under "auto" on CPU where it measured faster
  (`_dispatch`): stride-1 depthwise convs as shifted multiply-adds, unpadded 1x1 convs (any
  stride) and k x k convs of stride k (patchify, downsampling) as one matmul, stride-1 convs of
  few input channels (a first conv, LeNet's second) with a hand-written input gradient, convs
  larger than their stride (ResNet's strided 3x3) with the input gradient over the input's
  phases, other stride-1 convs (ResNet's 3x3) with the kernel gradient from copies of x and dy
  made apart. A float32 conv may take oneDNN's conv instead (`onednn`): under "onednn", and
  under "auto" where the autotune measured it fastest.

  A drop-in for `nnx.Conv(conv_general_dilated=...)`: the parameters and the results are those
  of the XLA conv (equal to float rounding, tested); only the computation differs."""
  def xla_op(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)

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
    described = (f"lhs {_shape(lhs)}, kernel {_shape(rhs)}, stride {strides}, padding {pads}, "
                 f"precision {precision}")
    by_onednn = (
        (lambda x, w: onednn.conv(x, w, strides[0], tuple(pads), feature_group_count))
        if pads is not None and strides[0] == strides[1] and onednn.applies(lhs, rhs) else None)
    if (pads is not None and feature_group_count == channels > 1 and rhs.shape[2] == 1
        and rhs.shape[3] == channels and strides == (1, 1)):
      return _dispatch(f"depthwise conv {described}",
                       lambda x, w: cpu_ops.depthwise_by_shifts(x, w, tuple(pads)),
                       xla_op, lhs, rhs, onednn_form=by_onednn)
    if (pads == [(0, 0), (0, 0)] and feature_group_count == 1 and kh == kw
        and strides[0] == strides[1] and (kh == 1 or strides[0] == kh)):
      return _dispatch(f"patch conv {described}",
                       lambda x, w: cpu_ops.patches_by_matmul(x, w, strides[0], precision),
                       xla_op, lhs, rhs, onednn_form=by_onednn)
    if (pads is not None and feature_group_count == 1 and strides[0] == strides[1] > 1
        and min(kh, kw) > strides[0]):
      return _dispatch(f"strided conv {described}",
                       lambda x, w: cpu_ops.strided_conv_by_phases(x, w, strides[0],
                                                                   tuple(pads), precision),
                       xla_op, lhs, rhs, onednn_form=by_onednn)
    if (pads is not None and feature_group_count == 1 and strides == (1, 1)
        and channels <= cpu_ops.FEW_CHANNELS):
      return _dispatch(f"few-channel conv {described}",
                       lambda x, w: cpu_ops.conv_by_taps(x, w, tuple(pads), precision),
                       xla_op, lhs, rhs, onednn_form=by_onednn)
    if pads is not None and feature_group_count == 1 and strides == (1, 1) and kh * kw > 1:
      return _dispatch(f"stride-1 conv {described}",
                       lambda x, w: cpu_ops.conv_with_copied_kernel_gradient(
                           x, w, tuple(pads), precision),
                       xla_op, lhs, rhs, onednn_form=by_onednn)
    if by_onednn is not None and _conv_impl.get() == "onednn":
      return by_onednn(lhs, rhs)
  return xla_op(lhs, rhs)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """k x k max pooling of NHWC x (padding with -inf, as PyTorch's MaxPool2d).

  Its CPU form (`_dispatch`: under "rewrite", and under "auto" on CPU where it measured faster)
  is `cpu_ops.max_pool_by_taps`: the maximum of k*k strided views, whose gradient goes to the
  first maximum of each window exactly as XLA's select-and-scatter routes it; values and
  gradients are identical (tested)."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))

  def xla_op(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=pads[1:3])

  def cpu_form(x: jax.Array) -> jax.Array:
    padded = jnp.pad(x, pads, constant_values=-jnp.inf) if padding else x
    return cpu_ops.max_pool_by_taps(padded, window, stride)

  return _dispatch(f"max pool {_shape(x)}, window {window}, stride {stride}, padding {padding}",
                   cpu_form, xla_op, x)


# torch's default Conv2d/Linear init is kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)) for
# the weight, and the same bound for the bias. In flax terms that is variance_scaling(1/3).
torch_default_kernel_init: nnx.Initializer = nnx.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> nnx.Initializer:
  """U(+-1/sqrt(fan_in)), torch's default bias init (flax cannot infer fan_in from the bias)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape, dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
           padding: int | None = None, groups: int = 1, use_bias: bool = True,
           kernel_init: nnx.Initializer | None = None,
           bias_init: nnx.Initializer | None = None, dtype: Dtype | None,
           param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A square conv padded as torch.nn.Conv2d pads: `padding` pixels on every side (default
  kernel_size // 2), not flax's 'SAME'.

  'SAME' pads (0, 1) for a stride-2 3x3 conv on even inputs where PyTorch pads (1, 1), which
  would shift every strided feature map by one pixel against converted weights. Runs through
  `conv_general_dilated`, so it takes the CPU forms where one applies. The initialisers default
  to flax's (each family passes its reference's)."""
  pad = kernel_size // 2 if padding is None else padding
  inits = {"kernel_init": kernel_init, "bias_init": bias_init}
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size),
                  strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                  feature_group_count=groups, use_bias=use_bias,
                  conv_general_dilated=conv_general_dilated, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs,
                  **{k: v for k, v in inits.items() if v is not None})


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _apart_when_differentiated(fn, *arrays):
  # Not differentiated (an eval step, predict): the plain function. A forward-only program
  # has no gradient consumers to fuse the chain into, and computing it apart (then a loop)
  # made it slower and larger (experiments/cpu_speed/README.md).
  return fn(*arrays)


def _apart_fwd(fn, *arrays):
  return cpu_ops.computed_apart(fn, *arrays), arrays


def _apart_bwd(fn, arrays, dy):
  return jax.vjp(fn, *arrays)[1](dy)


_apart_when_differentiated.defvjp(_apart_fwd, _apart_bwd)


def computed_once(fn: Any, *arrays: jax.Array) -> jax.Array:
  """`fn(*arrays)` for an elementwise `fn` of same-shaped arrays (a block's residual add and
  activation), under the "rewrite" conv impl and "auto" on CPU, where it is differentiated (a
  train step), computed apart (`cpu_ops.computed_apart`): XLA:CPU cannot fuse its result
  into its consumers. A forward-only program computes `fn(*arrays)` as it is.

  Without it, XLA:CPU fuses the cheap elementwise chain of a residual stream, x_{k+1} =
  act(x_k + bn(conv(...))), into every elementwise consumer of x_{k+1} (the next block's add,
  the activation's gradient mask, the transposed copy for the conv's kernel gradient, the
  option-A shortcut) and so recomputes each block's output from all the blocks before it in
  the stage, up to its code-duplication limit: work that grows as depth squared (ResNet-56's
  step cost 5x ResNet-20's for 3.1x the FLOPs). Values are those of `fn(*arrays)`; the
  gradient is `jax.vjp(fn, ...)` of the whole arrays, as without it (tested)."""
  x = arrays[0]
  if not _use_cpu_forms() or any(a.shape != x.shape or a.dtype != x.dtype for a in arrays):
    return fn(*arrays)
  return _apart_when_differentiated(fn, *arrays)


class Linear(nnx.Linear):
  """`nnx.Linear` (same parameters) over the last axis of an (..., C) array, computed on the
  array flattened to (rows, C): with the rows in several axes, XLA:CPU gives the weight-gradient
  dot a transposed copy of the output gradient, a large share of a ResNet-50 train step; with
  one row axis it reads both operands as they are. Elsewhere the reshapes are free."""

  def __call__(self, inputs: jax.Array) -> jax.Array:
    rows = inputs.reshape(-1, inputs.shape[-1])
    return super().__call__(rows).reshape(*inputs.shape[:-1], self.out_features)


def torch_linear(in_features: int, out_features: int, *, dtype: Dtype | None,
                 param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """nnx.Linear initialised like torch.nn.Linear."""
  return nnx.Linear(in_features, out_features, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(in_features), dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_keeping_statistics(x: jax.Array, scale: jax.Array, bias: jax.Array,
                                   eps: float) -> jax.Array:
  return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_forward(x, scale, bias, eps):
  # nnx.LayerNorm's arithmetic (its fast variance, its order of operations), so the values are
  # the same to rounding.
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axis=-1, keepdims=True) - jnp.square(mean))
  rstd = jax.lax.rsqrt(var + eps)
  return (x - mean) * (rstd * scale) + bias, (x, mean, rstd, scale)


def _layer_norm_backward(eps, kept, dy):
  del eps
  x, mean, rstd, scale = kept
  normalised = (x - mean) * rstd
  rows = tuple(range(x.ndim - 1))
  dscale = jnp.sum(dy * normalised, axis=rows)
  dbias = jnp.sum(dy, axis=rows)
  g = dy * scale
  dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
               - normalised * jnp.mean(g * normalised, axis=-1, keepdims=True))
  return dx, dscale, dbias


_layer_norm_keeping_statistics.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nnx.LayerNorm):
  """`nnx.LayerNorm` (same parameters, the same values to rounding) whose gradient, under the
  CPU forms (`conv_impl` "rewrite", or "auto" on CPU), keeps only x and each row's mean and
  1/std and computes dx, dscale and dbias from them, as PyTorch's layer_norm_backward does.
  Autodiff of nnx's form kept x^2, x - mean and (x - mean) rsqrt(var) scale, each at full
  size, for XLA:CPU to write out in the forward and read back (experiments/cpu_speed,
  vit_micro). Applies to float32 inputs and parameters with scale and bias, normalised over
  the last axis alone; anything else, and every other backend, runs nnx's form. Reverse-mode
  only under the CPU forms (a custom VJP)."""

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    if (mask is None and _use_cpu_forms() and self.scale is not None and self.bias is not None
        and self.axis_name is None and self.reduction_axes in (-1, (-1,), x.ndim - 1)
        and self.feature_axes in (-1, (-1,), x.ndim - 1) and x.dtype == jnp.float32
        and self.dtype in (None, jnp.float32) and self.scale.dtype == jnp.float32
        and self.bias.dtype == jnp.float32):
      return _layer_norm_keeping_statistics(x, self.scale[...], self.bias[...], self.epsilon)
    return super().__call__(x, mask=mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_keeping_statistics(x: jax.Array, scale: jax.Array, bias: jax.Array,
                                   eps: float) -> jax.Array:
  return _batch_norm_forward(x, scale, bias, eps)[0]


def _batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  # nnx.BatchNorm's (its fast variance), over every axis but the last.
  rows = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=rows)
  return mean, jnp.maximum(0.0, jnp.mean(jax.lax.square(x), axis=rows) - jax.lax.square(mean))


def _batch_norm_forward(x, scale, bias, eps):
  mean, var = _batch_statistics(x)
  rstd = jax.lax.rsqrt(var + eps)
  # nnx's order of operations, so the values are the same to rounding.
  return (x - mean) * (rstd * scale) + bias, (x, mean, rstd, scale)


def _batch_norm_backward(eps, kept, dy):
  del eps
  x, mean, rstd, scale = kept
  rows = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  normalised = (x - mean) * rstd
  dbias = jnp.sum(dy, axis=rows)
  dscale = jnp.sum(dy * normalised, axis=rows)
  dx = (scale * rstd) * (dy - dbias / count - normalised * (dscale / count))
  return dx, dscale, dbias


_batch_norm_keeping_statistics.defvjp(_batch_norm_forward, _batch_norm_backward)


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` (same parameters and statistics, the same values to rounding) whose
  gradient in training mode, under the CPU forms (`conv_impl` "rewrite", or "auto" on CPU),
  keeps only x and the batch's per-channel mean and 1/std and computes dx, dscale and dbias
  in one reducing pass and one elementwise pass, as PyTorch's batch_norm_backward does.
  Autodiff of nnx's form wrote x - mean out in the forward and took several more full-size
  passes back (experiments/cpu_speed, the CIFAR ResNets). Applies to float32 inputs and
  parameters with scale and bias, normalised per channel of the last axis without a mask or
  axis_name; anything else, evaluation with the running statistics, and every other backend
  run nnx's form. Reverse-mode only under the CPU forms (a custom VJP)."""

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    use_running_average = (self.use_running_average if use_running_average is None
                           else use_running_average)
    if (not use_running_average and mask is None and _use_cpu_forms()
        and self.scale is not None and self.bias is not None and self.axis_name is None
        and self.axis in (-1, x.ndim - 1) and self.use_fast_variance
        and x.dtype == jnp.float32 and self.dtype in (None, jnp.float32)
        and self.scale.dtype == jnp.float32 and self.bias.dtype == jnp.float32):
      mean, var = jax.lax.stop_gradient(_batch_statistics(x))
      self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
      self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
      return _batch_norm_keeping_statistics(x, self.scale[...], self.bias[...], self.epsilon)
    return super().__call__(x, use_running_average, mask=mask)


def layer_norm(channels: int, *, eps: float = 1e-6, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs) -> LayerNorm:
  """LayerNorm over the channel (last) axis of NHWC or NLC tensors, ConvNeXt/ViT style."""
  return LayerNorm(channels, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _attention_plain(q, k, v, scale, dropout=None):
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(scale, q.dtype), k)
  # Softmax in float32 even under bf16 compute; cast back for the value matmul.
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum("bhqk,bhkd->bqhd", weights, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention_keeping_weights(q, k, v, scale):
  return _attention_forward(q, k, v, scale)[0]


def _attention_forward(q, k, v, scale):
  q = q * jnp.asarray(scale, q.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
  exps = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
  inv_sums = 1 / exps.sum(axis=-1, keepdims=True)
  # The softmax's normalisation after the value matmul, on (B, H, N, Dh) instead of the
  # (B, H, N, N) weights (FlashAttention's forward), and the output made head-major then
  # transposed: XLA:CPU runs the whole forward faster so (experiments/cpu_speed, stop 31).
  out = (jnp.einsum("bhqk,bhkd->bhqd", exps, v) * inv_sums).transpose(0, 2, 1, 3)
  return out, (q, k, v, exps, inv_sums, out)


def _attention_backward(scale, kept, dout):
  q, k, v, exps, inv_sums, out = kept
  weights = exps * inv_sums
  dv = jnp.einsum("bhqk,bqhd->bhkd", weights, dout)
  dweights = jnp.einsum("bqhd,bhkd->bhqk", dout, v)
  # sum_k weights * dweights, which equals sum_d dout * out: one pass over (B, N, H, Dh)
  # instead of one over the (B, H, N, N) weights (FlashAttention's backward).
  row_dot = jnp.einsum("bqhd,bqhd->bhq", dout, out)[..., None]
  dlogits = weights * (dweights - row_dot)
  dq = jnp.einsum("bhqk,bhkd->bhqd", dlogits, k) * jnp.asarray(scale, q.dtype)
  dk = jnp.einsum("bhqk,bhqd->bhkd", dlogits, q)
  return dq, dk, dv


_attention_keeping_weights.defvjp(_attention_forward, _attention_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention_by_onednn(q, k, v, scale):
  """`_attention_keeping_weights` with the backward's four batched dots by oneDNN's matmul
  (`onednn.batched_matmul`, transposed operands read in place): the same values and gradients
  to float rounding."""
  return _attention_forward(q, k, v, scale)[0]


def _attention_backward_by_onednn(scale, kept, dout):
  q, k, v, exps, inv_sums, out = kept
  weights = exps * inv_sums
  dout_heads = dout.transpose(0, 2, 1, 3)  # (B, heads, N, Dh), as the matmuls take it.
  dv = onednn.batched_matmul(weights, dout_heads, transpose_a=True)
  dweights = onednn.batched_matmul(dout_heads, v, transpose_b=True)
  row_dot = jnp.einsum("bqhd,bqhd->bhq", dout, out)[..., None]
  dlogits = weights * (dweights - row_dot)
  dq = onednn.batched_matmul(dlogits, k) * jnp.asarray(scale, q.dtype)
  dk = onednn.batched_matmul(dlogits, q, transpose_a=True)
  return dq, dk, dv


_attention_by_onednn.defvjp(_attention_forward, _attention_backward_by_onednn)


# ViT's `attention_impl`: "auto" = `attention` below (the CPU forms on CPU, the plain
# einsum-softmax-einsum elsewhere); "xla" / "cudnn" = `jax.nn.dot_product_attention` with that
# implementation ("cudnn": cuDNN's fused flash attention, NVIDIA GPUs, bfloat16 or float16).
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def check_attention_impl(impl: str, *, dtype: Dtype | None, attn_dropout_rate: float) -> None:
  """ValueError, in one line, for an `attention_impl` that this process or model cannot run."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")
  if impl == "auto":
    return
  if attn_dropout_rate:
    raise ValueError(f"attention_impl={impl!r} has no dropout on the attention weights "
                     f"(attn_dropout_rate={attn_dropout_rate}); use attention_impl='auto'")
  if impl == "cudnn":
    backend = jax.default_backend()
    if backend != "gpu":
      raise ValueError(f"attention_impl='cudnn' runs on an NVIDIA GPU; JAX's backend here is "
                       f"{backend}")
    compute = jnp.dtype(dtype or jnp.float32)
    if compute not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"attention_impl='cudnn' needs dtype bfloat16 or float16 (cuDNN's "
                       f"flash attention), not {compute}")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
              dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """softmax(q k^T * scale) v for q, k, v laid out (B, heads, N, head_dim), returned token-major
  (B, N, heads, head_dim); `dropout` (if any) acts on the attention weights.

  Under the CPU forms (`conv_impl` "rewrite", or "auto" on CPU), with float32 operands and no
  dropout, the softmax is normalised after the value matmul (FlashAttention's forward) and the
  gradient is written out: it keeps the exponentials, their row sums' inverses and the output,
  and takes the softmax's row sum of weights * dweights as the row sum of dout * out, over
  head_dim instead of N (FlashAttention's backward). Autodiff of the plain form kept the
  softmax's unnormalised exponentials and 1/sum, which XLA:CPU wrote out at the
  (B, heads, N, N) size and read back in several passes (experiments/cpu_speed, vit_micro).
  That backward's four batched dots may run on oneDNN's matmul instead: under "onednn", and
  under "auto" where the autotune measured it faster for these shapes on this CPU (as for a
  conv, `_dispatch`). Same function and derivatives; float32 rounding differs (tested)."""
  if dropout is None and all(a.dtype == jnp.float32 for a in (q, k, v)):
    return _dispatch(
        f"attention q {_shape(q)}, k {_shape(k)}, v {_shape(v)}, scale {scale!r}",
        lambda q, k, v: _attention_keeping_weights(q, k, v, scale),
        lambda q, k, v: _attention_plain(q, k, v, scale), q, k, v,
        onednn_form=lambda q, k, v: _attention_by_onednn(q, k, v, scale))
  return _attention_plain(q, k, v, scale, dropout)


class PatchEmbed(nnx.Module):
  """Non-overlapping patchify: a conv with kernel = stride = patch size (ConvNeXt stem, ViT).

  Returns NHWC feature maps; ViT flattens them itself.
  """

  def __init__(self, in_channels: int, embed_dim: int, patch_size: int, *,
               use_bias: bool = True, kernel_init: nnx.Initializer | None = None,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.patch_size = patch_size
    self.proj = conv2d(in_channels, embed_dim, patch_size, patch_size, padding=0,
                       use_bias=use_bias, kernel_init=kernel_init, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h, w = x.shape[1:3]
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(
          f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
    return self.proj(x)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (nnx.Param leaves), as torchvision/timm count them."""
  return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
