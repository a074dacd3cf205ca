"""Exact CPU forms of the convolutions and the max pool that XLA:CPU runs slowly, with their
hand-written gradients.

`layers.conv_general_dilated` and `layers.max_pool` decide when these apply (the "rewrite"
conv impl; under "auto" on CPU, per shape, where `autotune` measured them faster) and for which
shapes; here are only the computations. Each
gives the values and gradients of the XLA op it replaces (equal to float rounding, tested in
tests/test_conv_rewrite.py) and takes the same parameters. The speed-ups that justify them are
in experiments/cpu_speed/README.md ("Figures behind code choices in models/").
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def computed_apart(fn: Any, *operands: Any) -> Any:
  """`fn(*operands)`, computed as the taken branch of a conditional whose predicate XLA cannot
  see (it comes through an optimization barrier). A branch's results are buffers, so XLA:CPU
  cannot fuse `fn`'s work into each consumer of them, which recomputes it in each; and over the
  whole operands the branch's fusions keep their split over XLA:CPU's threads. A scan's per-step
  results would instead be written into its stacked output by an in-place dynamic-update-slice,
  a fusion XLA:CPU runs on one thread; and a while loop that runs once (this function's earlier
  form) shares one state buffer between its operands and results, so XLA copied full-size
  arrays out of it (experiments/cpu_speed/README.md, stop 34)."""
  results = jax.eval_shape(fn, *operands)
  return jax.lax.cond(
      jax.lax.optimization_barrier(True), fn,
      lambda *_: jax.tree.map(lambda r: jnp.zeros(r.shape, r.dtype), results), *operands)


def _depthwise_taps(padded: jax.Array, kh: int, kw: int, out_h: int, out_w: int
                    ) -> list[tuple[int, int, jax.Array]]:
  return [(i, j, padded[:, i:i + out_h, j:j + out_w, :]) for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_by_shifts(x: jax.Array, kernel: jax.Array,
                        padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """Stride-1 depthwise conv, NHWC x with an (kh, kw, 1, C) kernel, as kh*kw shifted
  multiply-adds: XLA:CPU runs a depthwise conv (and its gradients) as a generic grouped
  convolution, many times slower than these elementwise loops.

  The gradient is written by hand. The forward and the input gradient are each computed apart
  (`computed_apart`), the kernel gradient in a loop over the images: their inputs and outputs
  are buffers, so XLA:CPU can neither fuse the padding (or the producer of x) into each of the
  kh*kw taps nor the taps into each consumer, which recomputed them (and compiled them again)
  per tap or per consumer."""
  return _depthwise_by_shifts_fwd(x, kernel, padding)[0]


def _depthwise_by_shifts_fwd(x, kernel, padding):
  (top, bottom), (left, right) = padding
  kh, kw = kernel.shape[:2]
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1

  # Apart (`computed_apart`) so that the output is computed once: as a plain expression XLA:CPU
  # fused the kh*kw taps into each consumer of the output (LayerNorm's statistics, its
  # normalisation, their gradients), compiling and running the taps several times over.
  def taps_sum(padded, kernel):
    out = None
    for i, j, tap in _depthwise_taps(padded, kh, kw, out_h, out_w):
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
    return out

  return computed_apart(taps_sum, padded, kernel), (padded, kernel)


def _depthwise_by_shifts_bwd(padding, residuals, dy):
  padded, kernel = residuals
  (top, bottom), (left, right) = padding
  kh, kw = kernel.shape[:2]
  out_h, out_w = dy.shape[1:3]
  in_h, in_w = padded.shape[1:3]

  def input_gradient(dy, kernel):
    # d(padded): dy correlated with the flipped kernel ("full" padding), then cropped to x.
    dy_full = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    d_padded = None
    for i, j, tap in _depthwise_taps(dy_full, kh, kw, in_h, in_w):
      term = tap * kernel[kh - 1 - i, kw - 1 - j, 0]
      d_padded = term if d_padded is None else d_padded + term
    return d_padded[:, top:in_h - bottom, left:in_w - right, :]

  def kernel_gradient(padded, dy):
    # One variadic reduce: as kh*kw separate sums XLA:CPU compiled kh*kw kernels per conv.
    products = [(tap * dy).astype(jnp.float32)
                for _, _, tap in _depthwise_taps(padded, kh, kw, out_h, out_w)]
    sums = jax.lax.reduce(products, [jnp.float32(0)] * len(products),
                          lambda a, b: [u + v for u, v in zip(a, b)], (0, 1, 2))
    return jnp.stack(sums)

  # The kernel gradient image by image (lax.scan), summed in the loop's carry: over the whole
  # batch XLA:CPU kept all kh*kw products alive at once (kh*kw activations of memory). The
  # barrier on `padded` keeps XLA from merging these taps with the forward's, which measurably
  # slowed the step. The input gradient apart (`computed_apart`): as a plain expression XLA:CPU
  # fused its taps through whole stages of FCMAE's masked residual stream into several
  # consumers, computing them again in each.
  d_kernel, _ = jax.lax.scan(
      lambda total, image: (total + kernel_gradient(*image), None),
      jnp.zeros((kh * kw, dy.shape[-1]), jnp.float32),
      (jax.lax.optimization_barrier(padded)[:, None], dy[:, None]))
  dx = computed_apart(input_gradient, dy, kernel)
  return dx, d_kernel.reshape(kernel.shape).astype(kernel.dtype)


depthwise_by_shifts.defvjp(_depthwise_by_shifts_fwd, _depthwise_by_shifts_bwd)


def patches_by_matmul(x: jax.Array, kernel: jax.Array, stride: int,
                      precision: Any) -> jax.Array:
  """Unpadded conv with a 1x1 kernel or a (k, k) kernel of stride k: the input pixels each
  output reads are disjoint, so it is a slice or reshape of x and one matmul. XLA:CPU lowers such
  convs (1x1 pointwise, strided 1x1 shortcuts, patchify stems, 2x2 downsampling) to a generic
  convolution whose weight gradient runs several times slower than the same matmul. The matmul
  reads 2-D operands: with the rows in several axes XLA:CPU gives the weight-gradient dot a
  transposed copy of the output gradient."""
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


def _window_taps(padded: jax.Array, window: int, stride: int) -> list[jax.Array]:
  """The window*window strided views of NHWC `padded`, one per window position, row-major."""
  out_h = (padded.shape[1] - window) // stride + 1
  out_w = (padded.shape[2] - window) // stride + 1
  return [padded[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_by_taps(padded: jax.Array, window: int, stride: int) -> jax.Array:
  """Unpadded window x window max pooling of NHWC `padded` as the maximum of its strided views,
  with a gradient that goes to the first maximum of each window in row-major order, exactly as
  XLA's select-and-scatter routes it (which XLA:CPU runs several times slower; autodiff through
  the maxima instead would recompute the chain of maxima)."""
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
  if window == stride and padded_shape[1:3] == (out_h * stride, out_w * stride):
    # Disjoint windows that tile the input: each input pixel belongs to exactly one tap, so the
    # taps' shares are interleaved (stacked and reshaped) rather than padded and added, which
    # made XLA:CPU evaluate every tap's share at every input pixel.
    shares = [jnp.where(first == t, dy, jnp.zeros((), dy.dtype)) for t in range(window * window)]
    rows = [jnp.stack(shares[i * window:(i + 1) * window], axis=3).reshape(
        dy.shape[0], out_h, out_w * stride, dy.shape[3]) for i in range(window)]
    return (jnp.stack(rows, axis=2).reshape(padded_shape),)
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


max_pool_by_taps.defvjp(_max_pool_by_taps_fwd, _max_pool_by_taps_bwd)


# Input channels up to which `conv_by_taps` applies: XLA:CPU's conv vectorises over them.
FEW_CHANNELS = 8


def _xla_conv(x: jax.Array, kernel: jax.Array,
              padding: tuple[tuple[int, int], tuple[int, int]], precision: Any,
              stride: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_by_taps(x: jax.Array, kernel: jax.Array,
                 padding: tuple[tuple[int, int], tuple[int, int]], precision: Any) -> jax.Array:
  """Stride-1 dense conv of NHWC x with an HWIO kernel of few input channels (a grey or colour
  image's first conv, LeNet's second). XLA:CPU's conv kernels vectorise over the input channels,
  so with one or a few their forward (one input channel) and input gradient (few output
  channels) run at a small fraction of their rate. Here one input channel's forward is kh*kw
  broadcast multiply-adds fused into one loop over the output, and the input gradient is a
  matmul of dy with all taps' weights whose kh*kw slices are added back at their offsets
  (col2im). The kernel gradient, which XLA:CPU runs well, and the forward with several input
  channels are XLA's own."""
  return _conv_by_taps_fwd(x, kernel, padding, precision)[0]


def _conv_by_taps_fwd(x, kernel, padding, precision):
  kh, kw, cin, _ = kernel.shape
  if cin > 1:
    return _xla_conv(x, kernel, padding, precision), (x, kernel)
  (top, bottom), (left, right) = padding
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1

  # Apart (`computed_apart`): as a plain expression XLA:CPU fused the kh*kw taps into each
  # consumer (the activation, the pool, their gradients), computing them again in each.
  # Sums in float32 at least, as XLA's conv accumulates a bfloat16 one.
  wide = jnp.promote_types(x.dtype, jnp.float32)

  def taps_sum(images):
    out = None
    for i in range(kh):
      for j in range(kw):
        term = (images[:, i:i + out_h, j:j + out_w, :].astype(wide)
                * kernel[i, j, 0].astype(wide))
        out = term if out is None else out + term
    return out.astype(x.dtype)

  return computed_apart(taps_sum, padded), (x, kernel)


def _conv_by_taps_bwd(padding, precision, residuals, dy):
  x, kernel = residuals
  (top, bottom), (left, right) = padding
  kh, kw, cin, cout = kernel.shape
  out_h, out_w = dy.shape[1:3]
  in_h, in_w = x.shape[1] + top + bottom, x.shape[2] + left + right
  d_kernel = jax.vjp(lambda k: _xla_conv(x, k, padding, precision), kernel)[1](dy)[0]
  wide = jnp.promote_types(dy.dtype, jnp.float32)
  taps = kernel.reshape(kh * kw, cin, cout)

  # Apart (`computed_apart`), so that dx is a buffer: as a plain expression XLA:CPU fused the
  # kh*kw shifted sums into each consumer (the activation's and the pool's gradients), adding
  # them up again in each. Each tap's share comes out of the matmul
  # channel-major, (tap, cin, image, row, column), so its shift moves whole contiguous rows; in
  # pixel-major order, with the few input channels minor, the shifted reads were strided and ran
  # at a fraction of the rate.
  def col2im(dys):
    backs = jnp.einsum("tco,nhwo->tcnhw", taps, dys, precision=precision,
                       preferred_element_type=wide)
    d_padded = None
    for t in range(kh * kw):
      i, j = divmod(t, kw)
      term = jnp.pad(backs[t], ((0, 0), (0, 0), (i, in_h - out_h - i), (j, in_w - out_w - j)))
      d_padded = term if d_padded is None else d_padded + term
    d_x = d_padded[:, :, top:in_h - bottom, left:in_w - right]
    return jnp.transpose(d_x, (1, 2, 3, 0)).astype(x.dtype)

  dx = computed_apart(col2im, dy)
  return dx, d_kernel


conv_by_taps.defvjp(_conv_by_taps_fwd, _conv_by_taps_bwd)


def _strided_conv_by_phases(x: jax.Array, kernel: jax.Array, stride: int,
                            padding: tuple[tuple[int, int], tuple[int, int]],
                            precision: Any) -> jax.Array:
  """The strided `_xla_conv` as the sum, over the stride x stride phases of the padded input
  (its rows p, p + stride, ... and columns q, q + stride, ...), of stride-1 VALID convs of each
  phase with the kernel's taps of that phase (rows p, p + stride, ...; columns likewise)."""
  (top, bottom), (left, right) = padding
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] + top + bottom - kh) // stride + 1
  out_w = (x.shape[2] + left + right - kw) // stride + 1
  # `stride` more rows and columns of zeros: every phase then has its full length.
  padded = jnp.pad(x, ((0, 0), (top, bottom + stride), (left, right + stride), (0, 0)))
  out = None
  for p in range(min(stride, kh)):
    for q in range(min(stride, kw)):
      taps = kernel[p::stride, q::stride]
      phase = padded[:, p::stride, q::stride, :][:, :out_h + taps.shape[0] - 1,
                                                  :out_w + taps.shape[1] - 1, :]
      term = _xla_conv(phase, taps, ((0, 0), (0, 0)), precision)
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def strided_conv_by_phases(x: jax.Array, kernel: jax.Array, stride: int,
                           padding: tuple[tuple[int, int], tuple[int, int]],
                           precision: Any) -> jax.Array:
  """Dense conv of NHWC x with an HWIO kernel larger than its stride (> 1), e.g. ResNet's
  strided 3x3: XLA's own forward and kernel gradient, and the input gradient as the gradient of
  the same conv written as stride-1 convs over the input's stride x stride phases
  (`_strided_conv_by_phases`). XLA:CPU computes a strided conv's input gradient as a conv over
  dy dilated with zeros, which its fast conv kernels do not take: it ran on one thread, 2-3x
  slower than the stride-1 convs of the phases."""
  return _xla_conv(x, kernel, padding, precision, stride)


def _strided_conv_by_phases_fwd(x, kernel, stride, padding, precision):
  return _xla_conv(x, kernel, padding, precision, stride), (x, kernel)


def _strided_conv_by_phases_bwd(stride, padding, precision, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _strided_conv_by_phases(x, kernel, stride, padding, precision),
               x)[1](dy)[0]
  d_kernel = jax.vjp(lambda k: _xla_conv(x, k, padding, precision, stride), kernel)[1](dy)[0]
  return dx, d_kernel


strided_conv_by_phases.defvjp(_strided_conv_by_phases_fwd, _strided_conv_by_phases_bwd)


def _kernel_gradient_from_copies(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...],
                                 padding: tuple[tuple[int, int], tuple[int, int]],
                                 precision: Any) -> jax.Array:
  """The stride-1 conv's kernel gradient as XLA:CPU computes it, a conv over x with the images
  as its input channels and dy as its kernel, but with both operands first copied to that
  order apart (`computed_apart`). Left to XLA, the copy of x fused the recomputation of x's
  producer (a BatchNorm and ReLU: five operands) and read all of them in transposed order."""
  kh, kw = kernel_shape[:2]
  (top, _), (left, _) = padding
  bottom = kh - 1 - top - x.shape[1] + dy.shape[1]
  right = kw - 1 - left - x.shape[2] + dy.shape[2]
  # x as (channel, row, column, image): the conv's batch is x's channels, its features the
  # images; dy as an HWIO kernel (row, column, image, output channel).
  x_t = computed_apart(lambda x: jnp.transpose(x, (3, 1, 2, 0)), x)
  dy_t = computed_apart(lambda dy: jnp.transpose(dy, (1, 2, 0, 3)), dy)
  d_kernel = jax.lax.conv_general_dilated(
      x_t, dy_t, (1, 1), ((top, bottom), (left, right)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
      preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
  return jnp.transpose(d_kernel, (1, 2, 0, 3)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_with_copied_kernel_gradient(x: jax.Array, kernel: jax.Array,
                                     padding: tuple[tuple[int, int], tuple[int, int]],
                                     precision: Any) -> jax.Array:
  """Stride-1 dense conv of NHWC x with an HWIO kernel (ResNet's 3x3 convs): XLA's own forward
  and input gradient, and the kernel gradient from copies of x and dy made apart
  (`_kernel_gradient_from_copies`)."""
  return _xla_conv(x, kernel, padding, precision)


def _conv_with_copied_kernel_gradient_fwd(x, kernel, padding, precision):
  return _xla_conv(x, kernel, padding, precision), (x, kernel)


def _conv_with_copied_kernel_gradient_bwd(padding, precision, residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: _xla_conv(x, kernel, padding, precision), x)[1](dy)[0]
  return dx, _kernel_gradient_from_copies(x, dy, kernel.shape, padding, precision)


conv_with_copied_kernel_gradient.defvjp(_conv_with_copied_kernel_gradient_fwd,
                                        _conv_with_copied_kernel_gradient_bwd)
