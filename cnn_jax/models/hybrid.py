"""Conv-attention hybrids: ConvNeXt V2 stages at high resolution, global self-attention after.

In the spirit of CoAtNet (Dai et al. 2021, "C-C-T-T") and timm's ConvNeXt/MaxViT hybrids: the
early, high-resolution stages keep the convolutional prior (locality, translation
equivariance, cheap on many positions); the late stages, where the map is small, are
transformer blocks in which every position attends to every other, so two regions anywhere in
the image can interact within one block.

  image -> stem (4x4 stride-4 conv + LN)
        -> stage i, for each kind in `stage_types`:
             "conv": ConvNeXt V2 stage (convnext.Stage: LN + 2x2/2 conv, then V2 blocks)
             "attn": LN + 2x2/2 conv (convnext.Downsample), + learned position embedding
                     (one vector per position of the stage's grid), flatten to tokens,
                     ViT pre-norm blocks (vit.Block: MHSA + MLP, GELU), back to NHWC
        -> global average pool -> LN -> Linear (convnext.Head)

The layers are the ConvNeXt and ViT ones unchanged, so a hybrid differs from
`convnextv2_*` only in the block type of its attention stages. Position embeddings are
absolute and learned, one table per attention stage (ViT's choice; CoAtNet uses a relative
bias), so the model is built for one `image_size`, like ViT.

Variants: the conv stages are those of the ConvNeXt V2 model of the same width, and the
number of attention blocks in stage 3 is the one that brings the parameter count (1000
classes, 3 channels, 224 px) closest to the model each is compared against:

  hybrid_atto   dims 40/80/160/320,  depths 2/2/5/1, heads 5/10  ->  3,563,600 params
                (convnextv2_atto 3,708,400: -3.9%)
  hybrid_tiny   dims 48/96/192/384,  depths 2/2/7/1, heads 6/12  ->  5,924,632
                (vit_tiny_patch16_224 5,717,416: +3.6%)
  hybrid_nano   dims 80/160/320/640, depths 2/2/7/1, heads 10/20 -> 15,915,320
                (convnextv2_nano 15,623,800: +1.9%)
  hybrid_micro  dims 16/32/64/128,   depths 2/2/6/1, heads 2/4, 64 px -> 699,960 (570,706 with
                1 channel and 2 classes: the CPU-scale model of experiments/long_range, matched
                there to a 16-wide ConvNeXt V2 (571,346) and vit_micro_patch8_64 (572,162)).

Heads are 32 channels wide everywhere (CoAtNet's choice). The position tables hold
(image_size/16)^2 x dims[2] + (image_size/32)^2 x dims[3] parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models import convnext, vit
from cnn_jax.models.layers import Dtype, trunc_normal
from cnn_jax.models.registry import register_model

STAGE_TYPES = ("conv", "attn")
HEAD_DIM = 32


class AttentionStage(nnx.Module):
  """Downsample to the stage's grid, add a learned position embedding, run ViT blocks."""

  def __init__(self, in_dim: int, out_dim: int, depth: int, grid: tuple[int, int], *,
               num_heads: int, mlp_ratio: float, downsample_cfg: convnext.BlockConfig,
               drop_path_rates: Sequence[float], dtype: Dtype | None, param_dtype: Dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.grid = grid
    self.dim = out_dim
    self.downsample = convnext.Downsample(in_dim, out_dim, 2, downsample_cfg, **kw)
    self.pos_embed = nnx.Param(
        trunc_normal(0.02)(rngs.params(), (1, grid[0] * grid[1], out_dim), param_dtype))
    self.blocks = nnx.List([
        vit.Block(out_dim, num_heads, mlp_ratio=mlp_ratio, drop_path_rate=rate, **kw)
        for rate in drop_path_rates])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.downsample(x)
    b, h, w, c = x.shape
    if (h, w) != self.grid:
      raise ValueError(f"attention stage built for a {self.grid[0]}x{self.grid[1]} grid got "
                       f"{h}x{w}; build the model with the image_size it is fed")
    tokens = x.reshape(b, h * w, c) + self.pos_embed[...].astype(x.dtype)
    for block in self.blocks:
      tokens = block(tokens)
    return tokens.reshape(b, h, w, c)


class Hybrid(nnx.Module):
  """ConvNeXt V2 stages, then attention stages (see the module docstring).

  Args:
    depths, dims: blocks and width per stage.
    stage_types: "conv" or "attn" per stage; every "attn" must come after every "conv".
    image_size: input side the position tables are built for (square inputs).
    patch_size: stem stride (4 as ConvNeXt; 2 or 1 for small images).
    mlp_ratio: hidden width / width of the attention blocks' MLP (and of nothing else).
    kernel_size: depthwise kernel of the conv blocks.
    norm: "ln" (ConvNeXt V2) or "bn" for the stem, the conv blocks and every downsample; the
      attention blocks and the head keep LayerNorm.
    drop_path_rate: stochastic depth, linear from 0 over all blocks (timm).
    head_init_scale: multiplies the classifier's initial weights (ConvNeXt V2 fine-tuning).
  """

  def __init__(self, *, depths: Sequence[int] = (2, 2, 4, 1),
               dims: Sequence[int] = (40, 80, 160, 320),
               stage_types: Sequence[str] = ("conv", "conv", "attn", "attn"),
               num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
               patch_size: int = 4, mlp_ratio: float = 4.0, kernel_size: int = 7,
               norm: str = "ln", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
               head_init_scale: float = 1.0, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if not len(depths) == len(dims) == len(stage_types):
      raise ValueError(f"depths {tuple(depths)}, dims {tuple(dims)} and stage_types "
                       f"{tuple(stage_types)} differ in length")
    for kind in stage_types:
      if kind not in STAGE_TYPES:
        raise ValueError(f"unknown stage type {kind!r}; choose from {list(STAGE_TYPES)}")
    if "attn" in stage_types and "conv" in stage_types[stage_types.index("attn"):]:
      raise ValueError(f"stage_types {tuple(stage_types)}: conv stages must come first")
    if stage_types[0] != "conv":
      raise ValueError("the first stage must be 'conv' (it runs at the stem's resolution)")
    for dim, kind in zip(dims, stage_types):
      if kind == "attn" and dim % HEAD_DIM:
        raise ValueError(f"attention width {dim} is not a multiple of the head width {HEAD_DIM}")
    total_stride = patch_size * 2 ** (len(dims) - 1)
    if image_size % total_stride:
      raise ValueError(f"image_size {image_size} is not divisible by the total stride "
                       f"{total_stride} (stem {patch_size} x 2^{len(dims) - 1})")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    cfg = convnext.BlockConfig(kernel_size=kernel_size, norm=norm, grn=True,
                               layer_scale_init=None)
    self.image_size = image_size
    self.in_channels = in_channels
    self.stage_types = tuple(stage_types)
    self.total_stride = total_stride
    self.num_features = dims[-1]
    self.stem = convnext.Stem("patchify", in_channels, dims[0], patch_size, cfg, **kw)

    total = sum(depths)
    rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    stages, in_dim, start = [], dims[0], 0
    for i, (depth, dim, kind) in enumerate(zip(depths, dims, stage_types)):
      stage_rates = rates[start:start + depth]
      if kind == "conv":
        stages.append(convnext.Stage(in_dim, dim, depth, 1 if i == 0 else 2, cfg,
                                     downsample="separate", drop_path_rates=stage_rates, **kw))
      else:
        side = image_size // (patch_size * 2 ** i)
        stages.append(AttentionStage(in_dim, dim, depth, (side, side),
                                     num_heads=dim // HEAD_DIM, mlp_ratio=mlp_ratio,
                                     downsample_cfg=cfg, drop_path_rates=stage_rates, **kw))
      in_dim, start = dim, start + depth
    self.stages = nnx.List(stages)
    self.head = convnext.Head(dims[-1], num_classes, use_norm=True, norm="ln",
                              drop_rate=drop_rate, init_scale=head_init_scale, **kw)

  def forward_features(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) images -> (N, H/s, W/s, num_features), s = total_stride."""
    if x.ndim != 4 or x.shape[1] != self.image_size or x.shape[2] != self.image_size:
      raise ValueError(f"this hybrid was built for {self.image_size}x{self.image_size} inputs "
                       f"(NHWC) but got shape {tuple(x.shape)}; build it with image_size="
                       f"{x.shape[1] if x.ndim == 4 else '...'} (the position tables depend "
                       "on it)")
    x = self.stem(x)
    for stage in self.stages:
      x = stage(x)
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.forward_features(x))


def _create(rngs: nnx.Rngs, defaults: dict[str, Any], kwargs: dict[str, Any]) -> Hybrid:
  return Hybrid(rngs=rngs, **{**defaults, **kwargs})


_CCTT = ("conv", "conv", "attn", "attn")


@register_model
def hybrid_atto(*, rngs: nnx.Rngs, **kwargs: Any) -> Hybrid:
  """Parameter-matched to convnextv2_atto (3,708,400)."""
  return _create(rngs, dict(depths=(2, 2, 5, 1), dims=(40, 80, 160, 320),
                            stage_types=_CCTT), kwargs)


@register_model
def hybrid_tiny(*, rngs: nnx.Rngs, **kwargs: Any) -> Hybrid:
  """Parameter-matched to vit_tiny_patch16_224 (5,717,416)."""
  return _create(rngs, dict(depths=(2, 2, 7, 1), dims=(48, 96, 192, 384),
                            stage_types=_CCTT), kwargs)


@register_model
def hybrid_nano(*, rngs: nnx.Rngs, **kwargs: Any) -> Hybrid:
  """Parameter-matched to convnextv2_nano (15,623,800)."""
  return _create(rngs, dict(depths=(2, 2, 7, 1), dims=(80, 160, 320, 640),
                            stage_types=_CCTT), kwargs)


@register_model
def hybrid_micro(*, rngs: nnx.Rngs, **kwargs: Any) -> Hybrid:
  """CPU-scale hybrid for the long-range experiment (64 px canvases)."""
  return _create(rngs, dict(depths=(2, 2, 6, 1), dims=(16, 32, 64, 128),
                            stage_types=_CCTT, image_size=64), kwargs)
