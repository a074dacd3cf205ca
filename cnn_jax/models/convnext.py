"""ConvNeXt V1 and V2, in a network wide enough to hold the ResNet-50 -> ConvNeXt-T roadmap.

Papers:
  * Liu et al., "A ConvNet for the 2020s", CVPR 2022, arXiv:2201.03545 (ConvNeXt V1).
  * Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
    CVPR 2023, arXiv:2301.00808 (GRN, FCMAE).

One configurable network (`ConvNeXt`, built from `Stem`, `Stage`, `Block`, `Head`) covers all of
them; the block's layout is a `BlockConfig`. A ConvNeXt V1 block is

    conv_dw (7x7 depthwise) -> norm (LN) -> fc1 (C -> 4C) -> GELU -> fc2 (4C -> C)
    -> gamma (LayerScale) -> DropPath -> + x

and V2 drops `gamma` and inserts `grn` (Global Response Norm) after the GELU. Variants (param
counts equal timm's `create_model(name).parameters()` to the unit):

  convnext_tiny/small/base/large/xlarge  dims 96/96/128/192/256 x (1,2,4,8), depths (3,3,9,3) for
                                         tiny, (3,3,27,3) otherwise; 28,589,128 / 50,223,688 /
                                         88,591,464 / 197,767,336 / 350,196,968 params.
  convnextv2_atto/femto/pico/nano/tiny/base/large/huge  dims 40/48/64/80/96/128/192/352 x (1,2,4,8),
                                         depths (2,2,6,2) atto-pico, (2,2,8,2) nano, (3,3,9,3) tiny,
                                         (3,3,27,3) base-huge; 3,708,400 / 5,233,240 / 9,066,280 /
                                         15,623,800 / 28,635,496 / 88,717,800 / 197,956,840 /
                                         660,289,640 params.

The ResNet-50 -> ConvNeXt-T roadmap of the paper's section 2 is a set of options of this
network: `cnn_jax/models/roadmap.py` (`convnext_roadmap`).

Layout and conversion notes: everything is NHWC; 1x1 convs are linear layers (timm's default
`conv_mlp=False`; `layers.Linear`, an `nnx.Linear`). Names follow timm with these renames for a
converter:
`stem.0/1 -> stem.conv/norm`, `stages.i.downsample.0/1 -> downsample.norm/conv`,
`blocks.j.mlp.fc1/fc2/grn -> blocks.j.fc1/fc2/grn` (GRN `weight/bias -> gamma/beta`),
`head.norm/fc` unchanged. timm's atto-nano use `conv_mlp=True`, i.e. 1x1 `Conv2d` weights that
need reshaping to Linear kernels. GELU is the exact (erf) form as in PyTorch, and every conv uses
PyTorch's explicit padding (k // 2), so converted weights reproduce timm's outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models.layers import (ACTIVATIONS, GRN, BatchNorm, DropPath, Dtype, Linear,
                                   conv2d, layer_norm, max_pool, trunc_normal)
from cnn_jax.models.registry import register_model

_CHOICES: dict[str, tuple[str, ...]] = {
    "block_type": ("inverted", "bottleneck"),
    "dw_position": ("top", "middle"),
    "num_activations": ("one", "all"),
    "num_norms": ("one", "all"),
    "norm": ("ln", "bn"),
    # "gelu" is the exact (erf) form, as timm's nn.GELU.
    "activation": ("relu", "gelu"),
    "stem": ("patchify", "resnet"),
    "downsample": ("separate", "in_block"),
}
_LN_EPS = 1e-6
_BN_EPS = 1e-5
# nnx momentum is the decay of the running average: PyTorch's momentum 0.1 is 0.9 here.
_BN_MOMENTUM = 0.9


def _check_choice(option: str, value: Any) -> None:
  if value not in _CHOICES[option]:
    raise ValueError(f"unknown {option} {value!r}; choose from {list(_CHOICES[option])}")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Layout of one residual block; every roadmap step is a point in this space.

  Attributes:
    block_type: 'inverted' (hidden = 4 x dim, ConvNeXt) or 'bottleneck' (hidden = dim / 4,
      ResNet); `mlp_ratio` overrides the ratio.
    mlp_ratio: hidden width / block output width; None takes block_type's.
    dw_position: 'top' (spatial conv first, on the block input) or 'middle' (between the two
      1x1 layers, on the hidden width, as in ResNet's bottleneck).
    depthwise: spatial conv is depthwise (ResNeXt-ify) rather than dense.
    kernel_size: spatial conv kernel, padded by kernel_size // 2.
    activation: 'gelu' or 'relu'.
    num_activations: 'all' (after every norm and after the residual add, ResNet) or 'one'
      (only between fc1 and fc2, Transformer MLP).
    num_norms: 'all' (after every conv) or 'one' (only after the spatial conv).
    norm: 'ln' (LayerNorm over channels, eps 1e-6) or 'bn' (BatchNorm, eps 1e-5).
    grn: Global Response Norm after fc1's activation (ConvNeXt V2).
    layer_scale_init: initial LayerScale value, None for no LayerScale.
    conv_bias: biases on convs/linears that are not directly followed by a BatchNorm.
  """

  block_type: str = "inverted"
  mlp_ratio: float | None = None
  dw_position: str = "top"
  depthwise: bool = True
  kernel_size: int = 7
  activation: str = "gelu"
  num_activations: str = "one"
  num_norms: str = "one"
  norm: str = "ln"
  grn: bool = False
  layer_scale_init: float | None = 1e-6
  conv_bias: bool = True

  def __post_init__(self) -> None:
    for option in ("block_type", "dw_position", "num_activations", "num_norms", "norm",
                   "activation"):
      _check_choice(option, getattr(self, option))
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f"kernel_size must be odd and positive (got {self.kernel_size})")

  @property
  def ratio(self) -> float:
    if self.mlp_ratio is not None:
      return float(self.mlp_ratio)
    return 4.0 if self.block_type == "inverted" else 0.25

  def bias_before(self, followed_by_norm: bool) -> bool:
    # A bias directly before BatchNorm is cancelled by its mean subtraction.
    return self.conv_bias and not (followed_by_norm and self.norm == "bn")


def _norm(kind: str, dim: int, *, dtype: Dtype | None, param_dtype: Dtype,
          rngs: nnx.Rngs) -> nnx.Module:
  if kind == "ln":
    return layer_norm(dim, eps=_LN_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  return BatchNorm(dim, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)


def _conv(in_dim: int, out_dim: int, kernel: int, stride: int, *, padding: int | None = None,
          groups: int = 1, use_bias: bool, dtype: Dtype | None, param_dtype: Dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
  return conv2d(in_dim, out_dim, kernel, stride, padding=padding, groups=groups,
                use_bias=use_bias, kernel_init=trunc_normal(0.02), dtype=dtype,
                param_dtype=param_dtype, rngs=rngs)


def _linear(in_dim: int, out_dim: int, *, use_bias: bool, dtype: Dtype | None,
            param_dtype: Dtype, rngs: nnx.Rngs) -> Linear:
  return Linear(in_dim, out_dim, use_bias=use_bias, kernel_init=trunc_normal(0.02),
                dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _mul_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  return x if mask is None else x * mask.astype(x.dtype)


class Projection(nnx.Module):
  """Projection shortcut of an in-block downsampling: 1x1 strided conv + norm (ResNet)."""

  def __init__(self, in_dim: int, out_dim: int, stride: int, cfg: BlockConfig, *,
               dtype: Dtype | None, param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv = _conv(in_dim, out_dim, 1, stride, padding=0, use_bias=cfg.bias_before(True),
                      **kw)
    self.norm = _norm(cfg.norm, out_dim, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class Block(nnx.Module):
  """Residual block spanning the ResNet bottleneck and the ConvNeXt V1/V2 blocks (see BlockConfig).

  `stride` > 1 or in_dim != out_dim (in-block downsampling) puts the stride on the spatial conv
  and adds a projection shortcut, as torchvision's ResNet-50 (v1.5) does.
  """

  def __init__(self, in_dim: int, out_dim: int, cfg: BlockConfig, *, stride: int = 1,
               drop_path: float = 0.0, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cfg = cfg
    self.act = ACTIVATIONS[cfg.activation]
    all_norms = cfg.num_norms == "all"
    hidden = int(round(out_dim * cfg.ratio))
    dw_dim = in_dim if cfg.dw_position == "top" else hidden
    # In 'top' position the spatial conv keeps the input width, so fc1 reads in_dim; in
    # 'middle' it sits on the hidden width.
    self.conv_dw = _conv(dw_dim, dw_dim, cfg.kernel_size, stride,
                         groups=dw_dim if cfg.depthwise else 1,
                         use_bias=cfg.bias_before(True), **kw)
    self.norm = _norm(cfg.norm, dw_dim, **kw)
    self.fc1 = _linear(in_dim, hidden, use_bias=cfg.bias_before(all_norms), **kw)
    self.norm1 = _norm(cfg.norm, hidden, **kw) if all_norms else None
    self.grn = GRN(hidden, dtype=dtype, param_dtype=param_dtype) if cfg.grn else None
    self.fc2 = _linear(hidden, out_dim, use_bias=cfg.bias_before(all_norms), **kw)
    self.norm2 = _norm(cfg.norm, out_dim, **kw) if all_norms else None
    self.gamma = (nnx.Param(jnp.full((out_dim,), cfg.layer_scale_init, param_dtype))
                  if cfg.layer_scale_init is not None else None)
    self.shortcut = (Projection(in_dim, out_dim, stride, cfg, **kw)
                     if stride != 1 or in_dim != out_dim else None)
    self.drop_path = DropPath(drop_path, rngs=rngs)

  def _spatial(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    # FCMAE hook: re-zero the masked positions the kxk window has smeared into.
    x = _mul_mask(self.conv_dw(x), mask)
    x = self.norm(x)
    return self.act(x) if self.cfg.num_activations == "all" else x

  def _expand(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    x = self.fc1(x)
    if self.norm1 is not None:
      x = self.norm1(x)
    x = self.act(x)
    # FCMAE hook: the per-position layers above refilled masked positions (norm and fc1
    # biases); GRN's spatial norm must sum the visible positions only, as a sparse conv net's.
    return x if self.grn is None else self.grn(_mul_mask(x, mask))

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (N, H, W, C_in); mask: optional (N, H', W', 1) at the output resolution, 1 = visible."""
    shortcut = x
    if self.cfg.dw_position == "top":
      x = self._expand(self._spatial(x, mask), mask)
    else:
      x = self._spatial(self._expand(x, mask), mask)
    x = self.fc2(x)
    if self.norm2 is not None:
      x = self.norm2(x)
    if self.gamma is not None:
      x = x * self.gamma[...].astype(x.dtype)
    if self.shortcut is not None:
      shortcut = self.shortcut(shortcut)
    x = self.drop_path(x) + shortcut
    if self.cfg.num_activations == "all":
      x = self.act(x)
    return _mul_mask(x, mask)


class Downsample(nnx.Module):
  """Separate downsampling layer between stages: norm + kxk stride-k conv (k = 2)."""

  def __init__(self, in_dim: int, out_dim: int, stride: int, cfg: BlockConfig, *,
               dtype: Dtype | None, param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = _norm(cfg.norm, in_dim, **kw)
    self.conv = _conv(in_dim, out_dim, stride, stride, padding=0, use_bias=cfg.conv_bias, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(self.norm(x))


class Stage(nnx.Module):
  """One resolution: optional separate `downsample`, then `blocks`."""

  def __init__(self, in_dim: int, out_dim: int, depth: int, stride: int, cfg: BlockConfig, *,
               downsample: str, drop_path_rates: Sequence[float], remat: bool = False,
               dtype: Dtype | None, param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.remat = remat
    if downsample == "separate" and (stride > 1 or in_dim != out_dim):
      self.downsample = Downsample(in_dim, out_dim, stride, cfg, **kw)
      in_dim, stride = out_dim, 1
    else:
      self.downsample = None
    blocks = []
    for j in range(depth):
      blocks.append(Block(in_dim, out_dim, cfg, stride=stride, drop_path=drop_path_rates[j],
                          **kw))
      in_dim, stride = out_dim, 1
    self.blocks = nnx.List(blocks)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if self.downsample is not None:
      x = _mul_mask(self.downsample(x), mask)
    for block in self.blocks:
      if self.remat:
        x = nnx.remat(lambda blk, y, m: blk(y, m))(block, x, mask)
      else:
        x = block(x, mask)
    return x


class Stem(nnx.Module):
  """'patchify': p x p stride-p conv + norm (ConvNeXt, after ViT/Swin's patch embedding).
  'resnet': 7x7/2 conv + norm + activation (the blocks') + 3x3/2 max pool (ResNet)."""

  def __init__(self, kind: str, in_channels: int, out_dim: int, patch_size: int,
               cfg: BlockConfig, *, dtype: Dtype | None, param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.kind = kind
    self.act = ACTIVATIONS[cfg.activation]
    if kind == "patchify":
      self.stride = patch_size
      self.conv = _conv(in_channels, out_dim, patch_size, patch_size, padding=0,
                        use_bias=cfg.bias_before(True), **kw)
    else:
      if patch_size != 4:
        raise ValueError(f"the 'resnet' stem has stride 4; patch_size={patch_size} needs "
                         "stem='patchify'")
      self.stride = 4
      self.conv = _conv(in_channels, out_dim, 7, 2, use_bias=cfg.bias_before(True), **kw)
    self.norm = _norm(cfg.norm, out_dim, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.norm(self.conv(x))
    if self.kind == "resnet":
      x = max_pool(self.act(x), 3, 2, padding=1)
    return x


class Head(nnx.Module):
  """Global average pool -> norm (LN, optional) -> dropout -> fc."""

  def __init__(self, dim: int, num_classes: int, *, use_norm: bool, norm: str,
               drop_rate: float, init_scale: float, dtype: Dtype | None, param_dtype: Dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = _norm(norm, dim, **kw) if use_norm else None
    # Without dropout there is no rng state, so a model is only Params (+ BatchStats).
    self.drop = nnx.Dropout(drop_rate, rngs=rngs if drop_rate > 0 else None)
    self.fc = _linear(dim, num_classes, use_bias=True, **kw)
    # A tiny head (V2 fine-tuning uses 0.001) keeps early logits near uniform so the first
    # updates do not wreck pretrained features.
    # Python floats are weakly typed, so the scaled params keep param_dtype.
    self.fc.kernel.set_value(self.fc.kernel[...] * init_scale)
    self.fc.bias.set_value(self.fc.bias[...] * init_scale)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    if self.norm is not None:
      x = self.norm(x)
    return self.fc(self.drop(x))


class ConvNeXt(nnx.Module):
  """ConvNeXt (Liu et al. 2022) / ConvNeXt V2 (Woo et al. 2023), and the roadmap models.

  Top-level children: `stem`, `stages` (nnx.List of Stage), `head`. `forward_features` returns
  the last stage's NHWC map; `__call__` adds the head and returns (N, num_classes) logits.
  Block options are documented on BlockConfig; model-level ones:

  Args:
    depths, dims: blocks per stage and residual width per stage.
    stem: 'patchify' or 'resnet'; stem_dim: its width (default dims[0]).
    patch_size: patchify stride; 4 for ImageNet, 1 or 2 for 28/32 px images.
    pad_input: zero pixels added on each side before the stem (28 -> 32 with 2).
    downsample: 'separate' (norm + 2x2/2 conv before stages 1..) or 'in_block' (stride 2 in the
      first block of the stage, projection shortcut).
    head_norm: LayerNorm-style norm after the global pool.
    drop_rate: dropout before fc; drop_path_rate: stochastic depth, linear from 0 over blocks.
    head_init_scale: multiplies the fc weight and bias at init.
    remat: rematerialise each block in the backward pass (nnx.remat).
  """
  @property
  def cpu_forward_dots_only(self) -> bool:
    """Read by `hostenv.forward_compiler_options`: on CPU, a forward-only program of a ConvNeXt
    without GRN (V1, the roadmap) runs faster with YNNPACK on its dots alone, where its wider
    fusions write each of the GELU's constants out at the size of a block's hidden activation
    (hostenv.INFERENCE_COMPILER_OPTIONS). With GRN (V2) the wider fusions are faster, as they
    are for ViT's forward (experiments/cpu_speed, stop 31)."""
    return not self.block_config.grn

  def __init__(self, *, depths: Sequence[int] = (3, 3, 9, 3),
               dims: Sequence[int] = (96, 192, 384, 768), num_classes: int = 1000,
               in_channels: int = 3, stem: str = "patchify", stem_dim: int | None = None,
               patch_size: int = 4, pad_input: int = 0, downsample: str = "separate",
               head_norm: bool = True, block_type: str = "inverted",
               mlp_ratio: float | None = None, dw_position: str = "top",
               depthwise: bool = True, kernel_size: int = 7, activation: str = "gelu",
               num_activations: str = "one", num_norms: str = "one", norm: str = "ln",
               grn: bool = False, layer_scale_init: float | None = 1e-6,
               conv_bias: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
               head_init_scale: float = 1.0, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, remat: bool = False, rngs: nnx.Rngs):
    if len(depths) != len(dims):
      raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} differ in length")
    if patch_size < 1 or pad_input < 0:
      raise ValueError(f"need patch_size >= 1 and pad_input >= 0 (got {patch_size}, {pad_input})")
    _check_choice("stem", stem)
    _check_choice("downsample", downsample)
    cfg = BlockConfig(block_type=block_type, mlp_ratio=mlp_ratio, dw_position=dw_position,
                      depthwise=depthwise, kernel_size=kernel_size, activation=activation,
                      num_activations=num_activations, num_norms=num_norms, norm=norm, grn=grn,
                      layer_scale_init=layer_scale_init, conv_bias=conv_bias)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.block_config = cfg
    self.depths = tuple(depths)
    self.lr_num_layers = sum(self.depths)  # layer-wise lr decay: see lr_layer_id
    self.dims = tuple(dims)
    self.pad_input = pad_input
    self.num_classes = num_classes
    self.num_features = dims[-1]
    stem_dim = dims[0] if stem_dim is None else stem_dim
    self.stem = Stem(stem, in_channels, stem_dim, patch_size, cfg, **kw)
    self.total_stride = self.stem.stride * 2 ** (len(dims) - 1)

    # Stochastic depth rises linearly over all blocks, from 0 at the first (timm).
    total = sum(depths)
    rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    stages, in_dim, start = [], stem_dim, 0
    for i, (depth, dim) in enumerate(zip(depths, dims)):
      stages.append(Stage(in_dim, dim, depth, 1 if i == 0 else 2, cfg, downsample=downsample,
                          drop_path_rates=rates[start:start + depth], remat=remat, **kw))
      in_dim, start = dim, start + depth
    self.stages = nnx.List(stages)
    self.head = Head(self.num_features, num_classes, use_norm=head_norm, norm=norm,
                     drop_rate=drop_rate, init_scale=head_init_scale, **kw)

  def lr_layer_id(self, names: tuple[str, ...]) -> int:
    """Layer of a parameter path for layer-wise lr decay, as the official ConvNeXt V2
    fine-tuning ('single' variant): the stem and stage i's downsampling share the id of the
    stage's first block, block j of stage i is sum(depths[:i]) + j + 1, the head
    lr_num_layers + 1."""
    if names[0] == "stem":
      return 1
    if names[0] == "stages":
      stage = int(names[1])
      block = int(names[3]) if names[2] == "blocks" else 0
      return sum(self.depths[:stage]) + block + 1
    return self.lr_num_layers + 1

  def forward_features(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: (N, H, W, C) images -> (N, H/s, W/s, num_features), s = total_stride.

    mask: optional (N, h, w, 1), 1 = visible, at a resolution that divides every stage's (e.g.
    the final one for FCMAE); it is upsampled by repetition and re-applied after the stem,
    after each downsampling, after each block's spatial conv, before GRN and at each block's
    output, so masked positions stay zero as in a sparse encoder.
    """
    if self.pad_input:
      p = self.pad_input
      x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = x.shape[1:3]
    s = self.total_stride
    if h % s or w % s:
      raise ValueError(
          f"image size {h}x{w} (after pad_input={self.pad_input}) is not divisible by the "
          f"total stride {s} (stem stride {self.stem.stride} x 2^{len(self.dims) - 1}); "
          "resize or pad the images, or use a smaller patch_size / pad_input")
    x = self.stem(x)
    x = _mul_mask(x, _resize_mask(mask, x.shape[1:3]))
    for i, stage in enumerate(self.stages):
      stage_hw = (h // self.stem.stride // 2 ** i, w // self.stem.stride // 2 ** i)
      x = stage(x, _resize_mask(mask, stage_hw))
    return x

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return self.head(self.forward_features(x, mask))


def _resize_mask(mask: jax.Array | None, hw: tuple[int, int]) -> jax.Array | None:
  if mask is None:
    return None
  mh, mw = mask.shape[1:3]
  if hw[0] % mh or hw[1] % mw:
    raise ValueError(f"mask {mh}x{mw} does not divide the feature map {hw[0]}x{hw[1]}")
  return jnp.repeat(jnp.repeat(mask, hw[0] // mh, axis=1), hw[1] // mw, axis=2)


def _create(rngs: nnx.Rngs, defaults: dict[str, Any], kwargs: dict[str, Any]) -> ConvNeXt:
  return ConvNeXt(rngs=rngs, **{**defaults, **kwargs})


def _dims(base: int) -> tuple[int, int, int, int]:
  return (base, 2 * base, 4 * base, 8 * base)


_V2 = dict(grn=True, layer_scale_init=None)


@register_model
def convnext_tiny(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 9, 3), dims=_dims(96)), kwargs)


@register_model
def convnext_small(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 27, 3), dims=_dims(96)), kwargs)


@register_model
def convnext_base(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 27, 3), dims=_dims(128)), kwargs)


@register_model
def convnext_large(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 27, 3), dims=_dims(192)), kwargs)


@register_model
def convnext_xlarge(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 27, 3), dims=_dims(256)), kwargs)


@register_model
def convnextv2_atto(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(2, 2, 6, 2), dims=_dims(40), **_V2), kwargs)


@register_model
def convnextv2_femto(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(2, 2, 6, 2), dims=_dims(48), **_V2), kwargs)


@register_model
def convnextv2_pico(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(2, 2, 6, 2), dims=_dims(64), **_V2), kwargs)


@register_model
def convnextv2_nano(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(2, 2, 8, 2), dims=_dims(80), **_V2), kwargs)


@register_model
def convnextv2_tiny(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 9, 3), dims=_dims(96), **_V2), kwargs)


@register_model
def convnextv2_base(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 27, 3), dims=_dims(128), **_V2), kwargs)


@register_model
def convnextv2_large(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 27, 3), dims=_dims(192), **_V2), kwargs)


@register_model
def convnextv2_huge(*, rngs: nnx.Rngs, **kwargs: Any) -> ConvNeXt:
  return _create(rngs, dict(depths=(3, 3, 27, 3), dims=_dims(352), **_V2), kwargs)
