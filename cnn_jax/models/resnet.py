"""ResNets and their plain twins (He, Zhang, Ren & Sun 2016).

"Deep Residual Learning for Image Recognition", CVPR 2016.

Two families share one `ResNet` module:

* ImageNet (`resnet18/34/50/101/152`, paper Table 1), laid out as torchvision's: a 7x7/2 stem
  conv + 3x3/2 max pool, four stages of BasicBlocks (18, 34) or Bottlenecks (50+) with widths
  64/128/256/512, projection shortcuts (paper option B) where the shape changes, and the
  stride on the 3x3 conv of a Bottleneck ("ResNet V1.5"; the paper strides the first 1x1).
  Parameter counts equal torchvision's to the unit. `small_stem=True` swaps the stem for a 3x3/1
  conv without pooling, for 28/32 px data.
* CIFAR (`resnet20/32/44/56/110`, paper section 4.2): 6n+2 layers, a 3x3 conv with 16 filters,
  three stages of n BasicBlocks at 16/32/64 filters on 32/16/8 px maps, global average pool and
  fc. Shortcuts are parameter-free by default (paper option A: subsample by 2 and zero-pad the new
  channels, as in the widely used akamaster/pytorch_resnet_cifar10 port), or 1x1 projections
  with `shortcut="B"`.

`plainNN` twins have the same layers with the shortcut removed (and no projection), the nets of
the paper's degradation experiment (Fig. 4 and 6).

Submodules follow torchvision's names so a weight converter maps them by prefix: torchvision's
`conv1`/`bn1` live under `stem`, then `layer1`..`layer4` (lists of blocks with `conv1`, `bn1`, ...,
`downsample.conv`/`downsample.bn`) and `fc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models.layers import (Activation, BatchNorm, DropPath, Dtype, computed_once,
                                   conv2d, get_activation, max_pool, torch_linear)
from cnn_jax.models.registry import register_model

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal.
conv_kernel_init: nnx.Initializer = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(cin: int, cout: int, kernel: int, stride: int = 1, *, dtype: Dtype | None,
         param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """torchvision's conv: bias-free, padded by kernel // 2, kaiming-normal (fan-out) init."""
  return conv2d(cin, cout, kernel, stride, use_bias=False, kernel_init=conv_kernel_init,
                dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def batch_norm(channels: int, *, zero_init: bool = False, dtype: Dtype | None,
               param_dtype: Dtype, rngs: nnx.Rngs) -> BatchNorm:
  """BatchNorm with PyTorch's defaults (torch momentum 0.1 = flax momentum 0.9, eps 1e-5).

  No axis_name: the train step is jitted over a globally sharded batch, so the batch
  statistics XLA computes are already global.
  """
  return BatchNorm(channels, momentum=0.9, epsilon=1e-5,
                   scale_init=nnx.initializers.zeros if zero_init else nnx.initializers.ones,
                   dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Projection(nnx.Module):
  """Shortcut option B: 1x1 strided conv + BN (torchvision's `downsample` Sequential)."""

  def __init__(self, cin: int, cout: int, stride: int, *, dtype: Dtype | None,
               param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv = conv(cin, cout, 1, stride, **kw)
    self.bn = batch_norm(cout, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))


class PadShortcut(nnx.Module):
  """Shortcut option A: parameter-free; subsample by the stride and zero-pad new channels.

  The padding is split evenly on both sides of the channel axis, as in the akamaster CIFAR
  port (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))`), so its weights
  convert without permuting channels.
  """

  def __init__(self, cin: int, cout: int, stride: int):
    if cout < cin:
      raise ValueError(f"option-A shortcut cannot reduce channels ({cin} -> {cout})")
    self.stride = stride
    self.pad = (cout - cin) // 2, cout - cin - (cout - cin) // 2

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), self.pad))


def make_shortcut(kind: str, cin: int, cout: int, stride: int, *, dtype: Dtype | None,
                  param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.Module | None:
  """None (identity) when shapes agree, as in the paper; else an option A or B shortcut."""
  if stride == 1 and cin == cout:
    return None
  if kind == "A":
    return PadShortcut(cin, cout, stride)
  return Projection(cin, cout, stride, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (ResNet-18/34 and the CIFAR nets); the first carries the stride."""

  expansion = 1

  def __init__(self, cin: int, planes: int, *, stride: int = 1, residual: bool = True,
               shortcut: str = "B", drop_path_rate: float = 0.0, zero_init_last_bn: bool = False,
               activation: Activation = nnx.relu, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = activation
    self.residual = residual
    self.conv1 = conv(cin, planes, 3, stride, **kw)
    self.bn1 = batch_norm(planes, **kw)
    self.conv2 = conv(planes, planes, 3, **kw)
    self.bn2 = batch_norm(planes, zero_init=zero_init_last_bn, **kw)
    self.downsample = (make_shortcut(shortcut, cin, planes, stride, **kw) if residual
                       else None)
    self.drop_path = DropPath(drop_path_rate if residual else 0.0, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = self.act(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if not self.residual:
      return self.act(out)
    identity = x if self.downsample is None else self.downsample(x)
    return computed_once(lambda a, b: self.act(a + b), identity, self.drop_path(out))


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (strided: torchvision V1.5), 1x1 expand by 4 (ResNet-50/101/152)."""

  expansion = 4

  def __init__(self, cin: int, planes: int, *, stride: int = 1, residual: bool = True,
               shortcut: str = "B", drop_path_rate: float = 0.0, zero_init_last_bn: bool = False,
               activation: Activation = nnx.relu, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    cout = planes * self.expansion
    self.act = activation
    self.residual = residual
    self.conv1 = conv(cin, planes, 1, **kw)
    self.bn1 = batch_norm(planes, **kw)
    self.conv2 = conv(planes, planes, 3, stride, **kw)
    self.bn2 = batch_norm(planes, **kw)
    self.conv3 = conv(planes, cout, 1, **kw)
    self.bn3 = batch_norm(cout, zero_init=zero_init_last_bn, **kw)
    self.downsample = (make_shortcut(shortcut, cin, cout, stride, **kw) if residual
                       else None)
    self.drop_path = DropPath(drop_path_rate if residual else 0.0, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = self.act(self.bn1(self.conv1(x)))
    out = self.act(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if not self.residual:
      return self.act(out)
    identity = x if self.downsample is None else self.downsample(x)
    return computed_once(lambda a, b: self.act(a + b), identity, self.drop_path(out))


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock, "bottleneck": Bottleneck}


class Stem(nnx.Module):
  """conv1 + bn1 + act, then the 3x3/2 max pool for the ImageNet stem.

  kind "imagenet": 7x7/2 conv and max pool (total stride 4); "small": 3x3/1 conv, no pool, for
  28/32 px images (CIFAR nets and `small_stem=True`).
  """

  def __init__(self, cin: int, width: int, kind: str, *, activation: Activation,
               dtype: Dtype | None, param_dtype: Dtype, rngs: nnx.Rngs):
    if kind not in ("imagenet", "small"):
      raise ValueError(f"unknown stem {kind!r}; choose 'imagenet' or 'small'")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.kind = kind
    self.act = activation
    self.stride = 4 if kind == "imagenet" else 1
    self.conv1 = conv(cin, width, 7 if kind == "imagenet" else 3, 2 if kind == "imagenet" else 1,
                      **kw)
    self.bn1 = batch_norm(width, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.act(self.bn1(self.conv1(x)))
    if self.kind == "imagenet":
      # PyTorch pads max pools with -inf, as flax's max_pool does with explicit padding.
      x = max_pool(x, 3, 2, padding=1)
    return x


def _call_block(block: nnx.Module, x: jax.Array) -> jax.Array:
  return block(x)


# Lifted remat: the block's BN statistics and DropPath rng counts still update inside it.
_remat_block = nnx.remat(_call_block)


class ResNet(nnx.Module):
  """ResNet or plain net: stem, stages `layer1`..`layerN`, global average pool, `fc`.

  Args:
    block: "basic" or "bottleneck".
    depths: blocks per stage; stage i > 0 starts with a stride-2 block.
    widths: planes per stage (Bottleneck outputs 4x this).
    num_classes, in_channels: head and input sizes.
    stem: "imagenet" (7x7/2 + max pool) or "small" (3x3/1).
    stem_width: filters of the stem conv.
    shortcut: "B" (1x1 conv + BN projection where the shape changes) or "A" (subsample +
      zero-pad channels, parameter-free).
    residual: False builds the plain twin (no shortcuts at all; `shortcut`, `drop_path_rate`
      are ignored).
    zero_init_last_bn: zero the last BN scale of each block, so every block starts as
      act(shortcut(x)) (Goyal et al. 2017; torchvision's `zero_init_residual`).
    drop_path_rate: stochastic depth (Huang et al. 2016) on the residual branch, rising
      linearly from 0 at the first block to this rate at the last.
    activation: "relu" (paper), or another name of `layers.ACTIVATIONS` ("tanh", "sigmoid",
      "gelu" (exact), "gelu_tanh") for activation experiments.
    remat: rematerialise each block in the backward pass (`nnx.remat`), trading compute for
      activation memory.
    size_multiple: input H and W must be multiples of this (the CIFAR nets use 4 so that every
      stage works on exactly the 32/16/8 px maps of the paper); 1 disables the check.
    dtype, param_dtype: compute and parameter dtypes.
  """

  def __init__(self, block: str, depths: Sequence[int], widths: Sequence[int], *,
               num_classes: int = 1000, in_channels: int = 3, stem: str = "imagenet",
               stem_width: int = 64, shortcut: str = "B", residual: bool = True,
               zero_init_last_bn: bool = False, drop_path_rate: float = 0.0,
               activation: str = "relu", remat: bool = False, size_multiple: int = 1,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if block not in BLOCKS:
      raise ValueError(f"unknown block {block!r}; choose from {sorted(BLOCKS)}")
    if len(depths) != len(widths) or not depths:
      raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} must be non-empty "
                       "and of equal length")
    act = get_activation(activation)
    if shortcut not in ("A", "B"):
      raise ValueError(f"unknown shortcut {shortcut!r}; choose 'A' (zero-pad) or 'B' (projection)")
    if not 0.0 <= drop_path_rate < 1.0:
      raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if zero_init_last_bn and not residual:
      # Every block of a plain net would output act(0) and the whole net would be constant.
      raise ValueError("zero_init_last_bn needs residual connections; the plain net would be dead")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    block_cls = BLOCKS[block]

    self.in_channels = in_channels
    self.residual = residual
    self.remat = remat
    self.size_multiple = size_multiple
    self.num_stages = len(depths)
    # The resolution the design targets (read by cnn_jax.summary): ImageNet crops or CIFAR.
    self.default_image_size = 224 if stem == "imagenet" else 32
    self.stem = Stem(in_channels, stem_width, stem, activation=act, **kw)
    # Total stride: the stem's, then x2 per stage after the first.
    self.min_size = self.stem.stride * 2 ** (len(depths) - 1)

    total = sum(depths)
    cin, index = stem_width, 0
    for i, (depth, width) in enumerate(zip(depths, widths)):
      blocks = []
      for j in range(depth):
        rate = drop_path_rate * index / (total - 1) if total > 1 else drop_path_rate
        blocks.append(block_cls(
            cin, width, stride=2 if (i > 0 and j == 0) else 1, residual=residual,
            shortcut=shortcut, drop_path_rate=rate, zero_init_last_bn=zero_init_last_bn,
            activation=act, **kw))
        cin = width * block_cls.expansion
        index += 1
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
    self.num_features = cin
    self.fc = torch_linear(cin, num_classes, **kw)

  @property
  def stages(self) -> list[nnx.List]:
    return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"{type(self).__name__} expects NHWC input with {self.in_channels} "
                       f"channels, got shape {x.shape}")
    h, w = x.shape[1:3]
    if min(h, w) < self.min_size:
      raise ValueError(f"image size {h}x{w} is too small for this ResNet: it needs at least "
                       f"{self.min_size}x{self.min_size} (its total stride)"
                       + ("" if self.stem.kind == "small" else "; use small_stem=True for "
                          "28/32 px images"))
    if h % self.size_multiple or w % self.size_multiple:
      raise ValueError(f"image size {h}x{w} is not supported: H and W must be multiples of "
                       f"{self.size_multiple}")

  def forward_features(self, x: jax.Array) -> jax.Array:
    """Feature map of the last stage, before pooling (NHWC, `num_features` channels)."""
    self._check_input(x)
    x = self.stem(x)
    for stage in self.stages:
      for block in stage:
        x = _remat_block(block, x) if self.remat else block(x)
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.forward_features(x)
    return self.fc(jnp.mean(x, axis=(1, 2)))


# ---------------------------------------------------------------------------------------------
# Variants


def _imagenet(block: str, depths: Sequence[int], *, rngs: nnx.Rngs, small_stem: bool = False,
              **kwargs: Any) -> ResNet:
  return ResNet(block, depths, (64, 128, 256, 512), stem="small" if small_stem else "imagenet",
                stem_width=64, rngs=rngs, **kwargs)


def _cifar(n: int, *, rngs: nnx.Rngs, num_classes: int = 10, shortcut: str = "A",
           **kwargs: Any) -> ResNet:
  return ResNet("basic", (n, n, n), (16, 32, 64), stem="small", stem_width=16,
                shortcut=shortcut, num_classes=num_classes, size_multiple=4, rngs=rngs, **kwargs)


@register_model
def resnet18(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-18: BasicBlocks (2, 2, 2, 2), 11,689,512 params."""
  return _imagenet("basic", (2, 2, 2, 2), rngs=rngs, **kwargs)


@register_model
def resnet34(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-34: BasicBlocks (3, 4, 6, 3), 21,797,672 params."""
  return _imagenet("basic", (3, 4, 6, 3), rngs=rngs, **kwargs)


@register_model
def resnet50(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-50: Bottlenecks (3, 4, 6, 3), 25,557,032 params."""
  return _imagenet("bottleneck", (3, 4, 6, 3), rngs=rngs, **kwargs)


@register_model
def resnet101(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-101: Bottlenecks (3, 4, 23, 3), 44,549,160 params."""
  return _imagenet("bottleneck", (3, 4, 23, 3), rngs=rngs, **kwargs)


@register_model
def resnet152(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """ResNet-152: Bottlenecks (3, 8, 36, 3), 60,192,808 params."""
  return _imagenet("bottleneck", (3, 8, 36, 3), rngs=rngs, **kwargs)


@register_model
def plain18(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """Plain-18: ResNet-18 without shortcuts (paper Fig. 4), 11,515,688 params."""
  return _imagenet("basic", (2, 2, 2, 2), residual=False, rngs=rngs, **kwargs)


@register_model
def plain34(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """Plain-34: ResNet-34 without shortcuts (paper Fig. 3 middle, Fig. 4), 21,623,848 params."""
  return _imagenet("basic", (3, 4, 6, 3), residual=False, rngs=rngs, **kwargs)


@register_model
def resnet20(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR ResNet-20 (n=3): 269,722 params with option A, 272,474 with option B."""
  return _cifar(3, rngs=rngs, **kwargs)


@register_model
def resnet32(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR ResNet-32 (n=5): 464,154 params with option A, 466,906 with option B."""
  return _cifar(5, rngs=rngs, **kwargs)


@register_model
def resnet44(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR ResNet-44 (n=7): 658,586 params with option A, 661,338 with option B."""
  return _cifar(7, rngs=rngs, **kwargs)


@register_model
def resnet56(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR ResNet-56 (n=9): 853,018 params with option A, 855,770 with option B."""
  return _cifar(9, rngs=rngs, **kwargs)


@register_model
def resnet110(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR ResNet-110 (n=18): 1,727,962 params with option A, 1,730,714 with option B."""
  return _cifar(18, rngs=rngs, **kwargs)


@register_model
def plain20(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR plain-20 (paper Fig. 6 left): same params as ResNet-20 with option A."""
  return _cifar(3, residual=False, rngs=rngs, **kwargs)


@register_model
def plain32(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR plain-32: same params as ResNet-32 with option A."""
  return _cifar(5, residual=False, rngs=rngs, **kwargs)


@register_model
def plain44(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR plain-44: same params as ResNet-44 with option A."""
  return _cifar(7, residual=False, rngs=rngs, **kwargs)


@register_model
def plain56(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR plain-56: same params as ResNet-56 with option A."""
  return _cifar(9, residual=False, rngs=rngs, **kwargs)


@register_model
def plain110(*, rngs: nnx.Rngs, **kwargs: Any) -> ResNet:
  """CIFAR plain-110: same params as ResNet-110 with option A."""
  return _cifar(18, residual=False, rngs=rngs, **kwargs)
