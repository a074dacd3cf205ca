"""Vision Transformer (Dosovitskiy et al. 2021), as timm's `vision_transformer.py` defines it.

image (NHWC) -> PatchEmbed (conv, kernel = stride = patch) -> flatten to tokens -> prepend the
class token -> add learned position embeddings (the class token has a position too) -> dropout
-> `depth` pre-norm blocks -> final LayerNorm -> Linear head on the class token.

Block (timm `Block`, no LayerScale, no qk-norm):
  x = x + DropPath(Attn(LN(x)));  x = x + DropPath(MLP(LN(x)))
  Attn: qkv = Linear(D, 3D, bias) -> heads -> softmax(q k^T / sqrt(d_head)) v -> Linear(D, D)
  MLP:  Linear(D, 4D) -> GELU (exact, erf) -> Linear(4D, D)
LayerNorm eps is 1e-6 everywhere. Parameter counts equal timm's to the unit:
ViT-Ti/16 5,717,416; ViT-S/16 22,050,664; ViT-B/16 86,567,656; ViT-L/16 304,326,632.

Submodule names follow timm (patch_embed.proj, cls_token, pos_embed, blocks[i].norm1,
blocks[i].attn.qkv, blocks[i].attn.proj, blocks[i].norm2, blocks[i].mlp.fc1, blocks[i].mlp.fc2,
norm, head) so a weight converter maps names one to one (torch Linear weights are (out, in);
flax kernels are (in, out); the conv kernel is OIHW in torch, HWIO here).

Initialisation follows timm's default ('' mode): Linear weights truncated normal std .02 with
zero bias, position embeddings truncated normal std .02, class token normal std 1e-6. The patch
conv keeps flax's default (lecun normal; timm leaves PyTorch's default there).

Dropout: `dropout_rate` is applied after the position embeddings, after the attention output
projection and after both MLP layers (the paper's placement; timm's pos_drop/proj_drop);
`attn_dropout_rate` drops attention probabilities. `drop_path_rate` rises linearly over blocks.

`attention_impl` (`layers.ATTENTION_IMPLS`): "auto" computes softmax(q k^T s) v with
`layers.attention`; "xla" and "cudnn" call `jax.nn.dot_product_attention` with that
implementation, "cudnn" being cuDNN's fused flash attention (an NVIDIA GPU, bfloat16 or
float16), as PyTorch's timm ViT calls its fused scaled-dot-product attention. Same function and
parameters; the rounding differs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cnn_jax.models.layers import (ACTIVATIONS, DropPath, Dtype, Linear, PatchEmbed, attention,
                                   check_attention_impl, layer_norm, trunc_normal)
from cnn_jax.models.registry import register_model

LN_EPS = 1e-6


def _linear(in_features: int, out_features: int, *, dtype, param_dtype, rngs) -> Linear:
  return Linear(in_features, out_features, kernel_init=trunc_normal(0.02),
                bias_init=nnx.initializers.zeros_init(), dtype=dtype, param_dtype=param_dtype,
                rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention with one fused qkv projection (timm `Attention`)."""

  def __init__(self, dim: int, num_heads: int, *, attn_dropout_rate: float = 0.0,
               proj_dropout_rate: float = 0.0, attention_impl: str = "auto",
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
    check_attention_impl(attention_impl, dtype=dtype, attn_dropout_rate=attn_dropout_rate)
    self.attention_impl = attention_impl
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.scale = self.head_dim ** -0.5
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = _linear(dim, 3 * dim, **kw)
    self.attn_drop = nnx.Dropout(attn_dropout_rate, rngs=rngs)
    self.proj = _linear(dim, dim, **kw)
    self.proj_drop = nnx.Dropout(proj_dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    if self.attention_impl != "auto":  # jax.nn's attention takes tokens before heads.
      qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
      out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                         scale=self.scale, implementation=self.attention_impl)
      return self.proj_drop(self.proj(out.reshape(b, n, d)))
    # Heads before tokens, (3, B, H, N, Dh), as timm lays them out. With (B, N, H, Dh), XLA:CPU
    # compiled both attention matmuls and the softmax between them into one YNNPACK kernel
    # that ran ~3x slower than the separate kernels it compiles for this layout
    # (experiments/cpu_speed, vit_micro). Same values and gradients (tested).
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
    dropout = None if self.attn_drop.deterministic or self.attn_drop.rate == 0 else self.attn_drop
    out = attention(qkv[0], qkv[1], qkv[2], self.scale, dropout).reshape(b, n, d)
    return self.proj_drop(self.proj(out))


class Mlp(nnx.Module):
  """Linear(D, hidden) -> GELU (exact) -> dropout -> Linear(hidden, D) -> dropout."""

  def __init__(self, dim: int, hidden_dim: int, *, dropout_rate: float = 0.0,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = _linear(dim, hidden_dim, **kw)
    self.drop1 = nnx.Dropout(dropout_rate, rngs=rngs)
    self.fc2 = _linear(hidden_dim, dim, **kw)
    self.drop2 = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.drop1(ACTIVATIONS["gelu"](self.fc1(x)))
    return self.drop2(self.fc2(x))


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
               dropout_rate: float = 0.0, attn_dropout_rate: float = 0.0,
               drop_path_rate: float = 0.0, attention_impl: str = "auto",
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = layer_norm(dim, eps=LN_EPS, **kw)
    self.attn = Attention(dim, num_heads, attn_dropout_rate=attn_dropout_rate,
                          proj_dropout_rate=dropout_rate, attention_impl=attention_impl, **kw)
    self.drop_path1 = DropPath(drop_path_rate, rngs=rngs)
    self.norm2 = layer_norm(dim, eps=LN_EPS, **kw)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout_rate=dropout_rate, **kw)
    self.drop_path2 = DropPath(drop_path_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.drop_path1(self.attn(self.norm1(x)))
    return x + self.drop_path2(self.mlp(self.norm2(x)))


def _block_forward(block: Block, x: jax.Array) -> jax.Array:
  return block(x)


class VisionTransformer(nnx.Module):
  """ViT with a class token and a linear head on it (timm `VisionTransformer`, global_pool='token').

  `num_classes=0` drops the head: the call then returns the normalised class token (B, D).
  """

  def __init__(self, *, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
               num_heads: int = 12, mlp_ratio: float = 4.0, num_classes: int = 1000,
               in_channels: int = 3, image_size: int = 224, dropout_rate: float = 0.0,
               attn_dropout_rate: float = 0.0, drop_path_rate: float = 0.0,
               attention_impl: str = "auto", dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, remat: bool = False, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(
          f"image_size {image_size} is not divisible by the patch size {patch_size}")
    self.image_size = image_size
    self.patch_size = patch_size
    self.embed_dim = embed_dim
    self.num_classes = num_classes
    self.remat = remat
    self.grid_size = image_size // patch_size
    num_tokens = self.grid_size ** 2 + 1  # + class token
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype

    self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size, **kw)
    self.cls_token = nnx.Param(
        nnx.initializers.normal(1e-6)(rngs.params(), (1, 1, embed_dim), param_dtype))
    self.pos_embed = nnx.Param(
        trunc_normal(0.02)(rngs.params(), (1, num_tokens, embed_dim), param_dtype))
    self.pos_drop = nnx.Dropout(dropout_rate, rngs=rngs)
    rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    self.blocks = nnx.List([
        Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, dropout_rate=dropout_rate,
              attn_dropout_rate=attn_dropout_rate, drop_path_rate=r,
              attention_impl=attention_impl, **kw)
        for r in rates])
    self.norm = layer_norm(embed_dim, eps=LN_EPS, **kw)
    self.head = _linear(embed_dim, num_classes, **kw) if num_classes > 0 else None

  def forward_features(self, x: jax.Array) -> jax.Array:
    """NHWC image -> normalised token sequence (B, 1 + grid^2, D), class token first."""
    if x.ndim != 4 or x.shape[1] != self.image_size or x.shape[2] != self.image_size:
      raise ValueError(
          f"this ViT was built for {self.image_size}x{self.image_size} inputs (NHWC) but got "
          f"an input of shape {tuple(x.shape)}; build the model with image_size="
          f"{x.shape[1] if x.ndim == 4 else '...'} (the position embeddings depend on it)")
    x = self.patch_embed(x)
    b = x.shape[0]
    x = x.reshape(b, -1, self.embed_dim)
    dtype = self.dtype or x.dtype
    cls = jnp.broadcast_to(self.cls_token.value.astype(dtype), (b, 1, self.embed_dim))
    x = jnp.concatenate([cls, x.astype(dtype)], axis=1)
    x = self.pos_drop(x + self.pos_embed.value.astype(dtype))
    forward = nnx.remat(_block_forward) if self.remat else _block_forward
    for block in self.blocks:
      x = forward(block, x)
    return self.norm(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.forward_features(x)[:, 0]
    return x if self.head is None else self.head(x)


def _vit(rngs: nnx.Rngs, architecture: dict[str, Any], **kwargs) -> VisionTransformer:
  """The variant's `architecture`, any field of which `kwargs` may override (a narrower or
  shallower ViT from the command line: --config.model.embed_dim=64 --config.model.depth=6)."""
  return VisionTransformer(**{**architecture, **kwargs}, rngs=rngs)


@register_model
def vit_tiny_patch16_224(*, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
  return _vit(rngs, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model
def vit_small_patch16_224(*, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
  return _vit(rngs, dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), **kwargs)


@register_model
def vit_base_patch16_224(*, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
  return _vit(rngs, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), **kwargs)


@register_model
def vit_large_patch16_224(*, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
  return _vit(rngs, dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), **kwargs)


# Small-image variants (CIFAR, 32x32): patch 4 gives an 8x8 grid, 65 tokens.
@register_model
def vit_tiny_patch4_32(*, rngs: nnx.Rngs, image_size: int = 32, **kwargs) -> VisionTransformer:
  return _vit(rngs, dict(patch_size=4, embed_dim=192, depth=12, num_heads=3,
                         image_size=image_size), **kwargs)


@register_model
def vit_small_patch4_32(*, rngs: nnx.Rngs, image_size: int = 32, **kwargs) -> VisionTransformer:
  return _vit(rngs, dict(patch_size=4, embed_dim=384, depth=12, num_heads=6,
                         image_size=image_size), **kwargs)


# CPU-scale variant for the 64 px long-range task (experiments/long_range): patch 8 gives an
# 8x8 grid, 65 tokens; ~0.57M params, matched to hybrid_micro and a 16-wide ConvNeXt V2.
@register_model
def vit_micro_patch8_64(*, rngs: nnx.Rngs, image_size: int = 64, **kwargs) -> VisionTransformer:
  return _vit(rngs, dict(patch_size=8, embed_dim=96, depth=5, num_heads=3,
                         image_size=image_size), **kwargs)
