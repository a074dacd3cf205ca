"""FCMAE: ConvNeXt V2's fully convolutional masked-autoencoder pre-training (Woo et al. 2023).

The official code runs the encoder as a MinkowskiEngine sparse network. Here it runs densely
with the same semantics: the model zoo's ConvNeXt takes a `mask` (1 = visible) and re-zeroes the
masked positions after the stem, after every downsampling conv, after every depthwise conv,
before every GRN (so its spatial norm sums visible positions only) and at every block output.
LayerNorms, 1x1 convs and GELU act per position and cannot move information between
positions, so between those points nothing leaks; every visible output equals the sparse
network's (tests/test_fcmae.py checks this against a NumPy sparse reference). The stem is a
p x p stride-p conv whose windows never straddle two mask patches, so, as in the official code,
it may see the whole image.

Pieces: `random_visible_grid` (the mask), `FCMAE` (encoder + `Decoder`), `patchify` and
`reconstruction_loss` (MSE on masked patches, per-patch normalised targets), `train_step` /
`eval_step`, reconstruction images, and `TASK`, which `train.train_and_evaluate` runs.

Interpretation choices: the official sparse GRN (MinkowskiGRN) takes its L2 norm over the
features of the whole batch at once (`x.F` stacks every image's points); here it is per image,
as the dense GRN at fine-tuning computes it. Initialisation is the model zoo's (truncated normal,
std 0.02, for every kernel); the official FCMAE re-initialises the depthwise convs, 1x1 layers,
stem and decoder convs with timm's `trunc_normal_` default std 1.0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from cnn_jax import checkpoint, train
from cnn_jax.errors import UserError
from cnn_jax.models.convnext import Block, BlockConfig, ConvNeXt
from cnn_jax.models.layers import trunc_normal
from cnn_jax.models.registry import initialize

# Distinct streams folded into the run's seed, so the masks do not repeat other draws.
_TRAIN_MASK_STREAM = 7001
_EVAL_MASK_STREAM = 7002
_NORM_PIX_EPS = 1e-6


def num_visible_patches(num_patches: int, mask_ratio: float) -> int:
  """Patches kept per image: floor(L * (1 - ratio)), as the official code (49 -> 19 at 0.6)."""
  # The epsilon keeps 10 * (1 - 0.9) = 0.99999... from flooring to 0.
  return int(math.floor(num_patches * (1.0 - mask_ratio) + 1e-6))


def random_visible_grid(rng: jax.Array, batch_size: int, grid_hw: tuple[int, int],
                        mask_ratio: float) -> jax.Array:
  """(N, gh, gw) float32, 1 = visible: each image keeps exactly `num_visible_patches` patches,
  chosen uniformly at random."""
  num_patches = grid_hw[0] * grid_hw[1]
  noise = jax.random.uniform(rng, (batch_size, num_patches))
  ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  visible = ranks < num_visible_patches(num_patches, mask_ratio)
  return visible.reshape(batch_size, *grid_hw).astype(jnp.float32)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(N, H, W, C) -> (N, H/p, W/p, p*p*C), pixels ordered (row, column, channel) within a patch
  as the official `patchify`, so a converted official decoder predicts the same layout."""
  n, h, w, c = images.shape
  p = patch_size
  x = images.reshape(n, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // p, w // p, p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, channels: int) -> jax.Array:
  n, gh, gw, _ = patches.shape
  p = patch_size
  x = patches.reshape(n, gh, gw, p, p, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * p, gw * p, channels)


def patch_targets(images: jax.Array, patch_size: int, norm_pix_loss: bool) -> jax.Array:
  """The pixels each grid cell must predict; with `norm_pix_loss`, normalised per patch by its
  own mean and (unbiased, as torch's .var) variance."""
  target = patchify(images.astype(jnp.float32), patch_size)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + _NORM_PIX_EPS)
  return target


def per_patch_loss(pred: jax.Array, images: jax.Array, patch_size: int,
                   norm_pix_loss: bool) -> jax.Array:
  """(N, gh, gw): mean squared error of each patch's prediction."""
  target = patch_targets(images, patch_size, norm_pix_loss)
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)


def reconstruction_loss(pred: jax.Array, images: jax.Array, visible: jax.Array, *,
                        patch_size: int, norm_pix_loss: bool) -> jax.Array:
  """Mean over the masked patches only of the per-patch MSE (visible patches count nothing)."""
  masked = 1.0 - visible
  loss = per_patch_loss(pred, images, patch_size, norm_pix_loss)
  return jnp.sum(loss * masked) / jnp.maximum(jnp.sum(masked), 1.0)


class Decoder(nnx.Module):
  """1x1 projection to `dim`, the learned mask token at masked positions, `depth` ConvNeXt V2
  blocks, and a 1x1 prediction of each patch's p*p*C pixels."""

  def __init__(self, in_dim: int, *, dim: int, depth: int, patch_size: int, out_channels: int,
               rngs: nnx.Rngs):
    self.proj = nnx.Linear(in_dim, dim, kernel_init=trunc_normal(0.02), rngs=rngs)
    # Official init: normal(std=0.02).
    self.mask_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (dim,)))
    v2_block = BlockConfig(grn=True, layer_scale_init=None)
    self.blocks = nnx.List([Block(dim, dim, v2_block, rngs=rngs) for _ in range(depth)])
    self.pred = nnx.Linear(dim, patch_size * patch_size * out_channels,
                           kernel_init=trunc_normal(0.02), rngs=rngs)

  def __call__(self, features: jax.Array, visible: jax.Array) -> jax.Array:
    """features (N, h, w, C_enc); visible (N, h, w, 1) -> (N, h, w, p*p*C)."""
    x = self.proj(features)
    token = self.mask_token[...].astype(x.dtype)
    x = x * visible.astype(x.dtype) + token * (1.0 - visible.astype(x.dtype))
    for block in self.blocks:
      x = block(x)
    return self.pred(x)


class FCMAE(nnx.Module):
  """A ConvNeXt encoder (its classifier head removed) and a `Decoder`.

  `__call__(images, visible)` returns per-patch pixel predictions (N, H/p, W/p, p*p*C); `visible`
  is the (N, H/p, W/p) patch grid, 1 = visible (None: all visible). `sparse=False` is the
  paper's dense ablation: masked pixels are zeroed once at the input and the encoder then runs
  as a plain dense network, so masked positions fill up from their neighbours.
  """

  def __init__(self, encoder: ConvNeXt, *, patch_size: int, decoder_dim: int,
               decoder_depth: int, sparse: bool, rngs: nnx.Rngs):
    if patch_size != encoder.total_stride:
      raise ValueError(f"fcmae.patch_size={patch_size} must equal the encoder's total stride "
                       f"{encoder.total_stride} (one mask patch per final feature position)")
    if encoder.pad_input:
      raise ValueError("FCMAE needs pad_input=0: padding would misalign the mask patches")
    encoder.head = None  # Pre-training has no classifier; fine-tuning adds a fresh head.
    self.encoder = encoder
    self.patch_size = patch_size
    self.sparse = sparse
    self.in_channels = encoder.stem.conv.in_features
    decoder_options = dict(dim=decoder_dim, depth=decoder_depth, patch_size=patch_size,
                           out_channels=self.in_channels)
    self.decoder = initialize(
        lambda rngs: Decoder(encoder.num_features, **decoder_options, rngs=rngs), rngs,
        cache_key=(Decoder, encoder.num_features, *sorted(decoder_options.items())))

  def grid_shape(self, image_hw: tuple[int, int]) -> tuple[int, int]:
    return image_hw[0] // self.patch_size, image_hw[1] // self.patch_size

  def __call__(self, images: jax.Array, visible: jax.Array | None = None) -> jax.Array:
    if visible is None:
      visible = jnp.ones((images.shape[0], *self.grid_shape(images.shape[1:3])), jnp.float32)
    grid_mask = visible[..., None]
    if self.sparse:
      features = self.encoder.forward_features(images, grid_mask)
    else:
      pixel_mask = jnp.repeat(jnp.repeat(grid_mask, self.patch_size, axis=1),
                              self.patch_size, axis=2)
      features = self.encoder.forward_features(images * pixel_mask.astype(images.dtype))
    return self.decoder(features, grid_mask)


def build_model(config: ml_collections.ConfigDict) -> FCMAE:
  """The FCMAE model of `config.model` (the encoder, from the model zoo) and `config.fcmae`."""
  encoder = train.build_model(config)
  if not isinstance(encoder, ConvNeXt):
    raise UserError(f"FCMAE needs a ConvNeXt encoder; {config.model.name} is not one")
  fc = config.fcmae
  if not 0.0 < fc.mask_ratio < 1.0:
    raise UserError(f"fcmae.mask_ratio={fc.mask_ratio} must lie strictly between 0 and 1")
  try:
    return FCMAE(encoder, patch_size=fc.patch_size, decoder_dim=fc.decoder_dim,
                 decoder_depth=fc.decoder_depth, sparse=fc.sparse,
                 rngs=nnx.Rngs(config.seed + 2))
  except ValueError as e:
    raise UserError(str(e)) from None


def step_options(config: ml_collections.ConfigDict, info: Any) -> dict[str, Any]:
  del info
  return dict(seed=config.seed, mask_ratio=config.fcmae.mask_ratio,
              patch_size=config.fcmae.patch_size, norm_pix_loss=config.fcmae.norm_pix_loss,
              ema_decay=config.ema_decay, grad_accum_steps=config.optimizer.grad_accum_steps)


def train_step(state: train.TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int,
               mask_ratio: float, patch_size: int, norm_pix_loss: bool, ema_decay: float,
               grad_accum_steps: int) -> tuple[train.TrainState, dict[str, jax.Array]]:
  """One FCMAE update; the masks are a function of (seed, step), so a resumed run redraws them."""
  images = batch["image"]
  grid_hw = (images.shape[1] // patch_size, images.shape[2] // patch_size)
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _TRAIN_MASK_STREAM),
                           state.step)
  visible = random_visible_grid(rng, images.shape[0], grid_hw, mask_ratio)

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.model_state)
    pred = model(images, visible)
    loss = reconstruction_loss(pred, images, visible, patch_size=patch_size,
                               norm_pix_loss=norm_pix_loss)
    return loss, nnx.state(model, nnx.Not(nnx.Param))

  (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  step_metrics = {
      "loss": loss,
      "learning_rate": schedule(state.step // grad_accum_steps),
      "grad_norm": optax.global_norm(grads),
  }
  return train.apply_gradients(state, grads, model_state, tx=tx,
                               ema_decay=ema_decay), step_metrics


def eval_visible_grid(seed: int, batch_size: int, grid_hw: tuple[int, int],
                      mask_ratio: float) -> jax.Array:
  """The fixed masks of evaluation: the same for every eval batch and every evaluation."""
  rng = jax.random.fold_in(jax.random.key(seed), _EVAL_MASK_STREAM)
  return random_visible_grid(rng, batch_size, grid_hw, mask_ratio)


def make_eval_step(config: ml_collections.ConfigDict) -> Callable[..., dict[str, jax.Array]]:
  fc = config.fcmae

  def eval_step(state: train.TrainState, batch: dict[str, jax.Array], *,
                graphdef: nnx.GraphDef) -> dict[str, jax.Array]:
    """Masked-patch squared-error sums over the valid rows (fixed masks)."""
    images = batch["image"]
    grid_hw = (images.shape[1] // fc.patch_size, images.shape[2] // fc.patch_size)
    visible = eval_visible_grid(config.seed, images.shape[0], grid_hw, fc.mask_ratio)
    masked = (1.0 - visible) * batch["mask"][:, None, None]

    def sums(params):
      pred = nnx.merge(graphdef, params, state.model_state)(images, visible)
      loss = per_patch_loss(pred, images, fc.patch_size, fc.norm_pix_loss)
      return {"loss_sum": jnp.sum(loss * masked), "masked_patches": jnp.sum(masked)}

    out = sums(state.params)
    if state.ema_params is not None:
      out.update({f"ema_{k}": v for k, v in sums(state.ema_params).items()})
    return out

  return eval_step


def summarize_eval(totals: dict[str, Any]) -> dict[str, float]:
  results = {}
  for prefix in ("", "ema_"):
    if f"{prefix}masked_patches" in totals:
      results[f"{prefix}loss"] = (float(totals[f"{prefix}loss_sum"])
                                  / max(float(totals[f"{prefix}masked_patches"]), 1.0))
  return results


def reconstruction_panels(model: FCMAE, images: jax.Array, visible: jax.Array, *,
                          norm_pix_loss: bool) -> dict[str, jax.Array]:
  """(N, H, W, C) arrays in the images' units: original, masked (masked patches = NaN),
  reconstruction, and reconstruction with the visible pixels pasted back.

  With `norm_pix_loss` the model predicts normalised patches; they are shown de-normalised
  with each true patch's mean and std (as MAE's visualisations do)."""
  p, c = model.patch_size, images.shape[-1]
  pred = model(images, visible).astype(jnp.float32)
  if norm_pix_loss:
    true = patchify(images.astype(jnp.float32), p)
    mean = true.mean(axis=-1, keepdims=True)
    std = jnp.sqrt(true.var(axis=-1, keepdims=True, ddof=1) + _NORM_PIX_EPS)
    pred = pred * std + mean
  recon = unpatchify(pred, p, c)
  pixel_visible = jnp.repeat(jnp.repeat(visible[..., None], p, axis=1), p, axis=2)
  return {
      "original": images,
      "masked": jnp.where(pixel_visible > 0, images, jnp.nan),
      "reconstruction": recon,
      "reconstruction_visible": pixel_visible * images + (1 - pixel_visible) * recon,
  }


PANEL_ORDER = ("original", "masked", "reconstruction", "reconstruction_visible")
MASKED_GRAY = 0.5
GRID_GAP = 2


def reconstruction_grid(panels: dict[str, np.ndarray]) -> np.ndarray:
  """uint8 (rows * (H + gap) + gap, 4 * (W + gap) + gap, 3): one row per image, the columns
  in PANEL_ORDER, white gaps. Each row is scaled to [0, 1] by its original's min and max;
  masked patches are mid-gray."""
  original = panels["original"]
  n, h, w, c = original.shape
  lo = original.min(axis=(1, 2, 3), keepdims=True)
  hi = original.max(axis=(1, 2, 3), keepdims=True)
  g = GRID_GAP
  grid = np.ones((n * (h + g) + g, len(PANEL_ORDER) * (w + g) + g, 3), np.float32)
  for col, name in enumerate(PANEL_ORDER):
    shown = (panels[name] - lo) / np.maximum(hi - lo, 1e-6)
    shown = np.clip(np.nan_to_num(shown, nan=MASKED_GRAY), 0.0, 1.0)
    if c == 1:
      shown = np.repeat(shown, 3, axis=-1)
    for row in range(n):
      top, left = g + row * (h + g), g + col * (w + g)
      grid[top:top + h, left:left + w] = shown[row, ..., :3]
  return np.round(grid * 255).astype(np.uint8)


def make_reconstruction_hook(*, config: ml_collections.ConfigDict, workdir: str, mesh: Any,
                             eval_graphdef: nnx.GraphDef, eval_batches: Any, writer: Any
                             ) -> Callable[[int, train.TrainState, bool], None]:
  """Every `fcmae.reconstruction_every_steps` steps (0: never) and at the end: the grid of the
  first eval images, to TensorBoard and to WORKDIR/reconstructions/step_XXXXXXX.png."""
  del mesh
  fc = config.fcmae
  images = jnp.asarray(next(iter(eval_batches))["image"][:fc.num_reconstructions])
  grid_hw = (images.shape[1] // fc.patch_size, images.shape[2] // fc.patch_size)
  visible = eval_visible_grid(config.seed, images.shape[0], grid_hw, fc.mask_ratio)

  @jax.jit
  def panels_fn(params, model_state):
    model = nnx.merge(eval_graphdef, params, model_state)
    return reconstruction_panels(model, images, visible, norm_pix_loss=fc.norm_pix_loss)

  def hook(step: int, state: train.TrainState, force: bool) -> None:
    every = fc.reconstruction_every_steps
    if not (force or (every and step % every == 0)):
      return
    panels = jax.device_get(panels_fn(state.params, state.model_state))
    grid = reconstruction_grid({k: np.asarray(v) for k, v in panels.items()})
    writer.write_images(step, {"fcmae/reconstruction": grid})
    if jax.process_index() == 0:
      save_png(grid, os.path.join(workdir, "reconstructions", f"step_{step:07d}.png"))

  return hook


def save_png(image: np.ndarray, path: str) -> None:
  from PIL import Image  # Only the reconstruction images need it.

  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


TASK_NAME = "fcmae"


def make_task(config: ml_collections.ConfigDict) -> train.Task:
  return train.Task(build_model=build_model, train_step=train_step, step_options=step_options,
                    eval_step=make_eval_step(config), summarize_eval=summarize_eval,
                    make_step_hook=make_reconstruction_hook, eval_metric_names=("loss",))


ENCODER_DIR = "encoder"


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """FCMAE pre-training of `config.model` with `config.fcmae`; returns the final eval loss.

  A finished run also exports its encoder to WORKDIR/encoder (see `export_encoder`)."""
  final = train.train_and_evaluate(config, workdir, task=make_task(config))
  if final and jax.process_index() == 0:
    export_encoder(workdir, os.path.join(workdir, ENCODER_DIR), model_name=config.model.name)
  return final


def encoder_params(fcmae_workdir: str) -> dict[tuple[str, ...], np.ndarray]:
  """{path: array} of the encoder parameters in the latest checkpoint of an FCMAE workdir,
  paths as in the encoder model's own nnx state ('stages', '0', 'blocks', ...)."""
  _, params, _ = checkpoint.read_run_weights(fcmae_workdir)
  encoder = {tuple(name.split(".")[1:]): np.asarray(value, np.float32)
             for name, value in params.items() if name.startswith("encoder.")}
  if not encoder or not any(name.startswith("decoder.") for name in params):
    raise UserError(f"{fcmae_workdir!r} is not an FCMAE workdir (no encoder/decoder params)")
  return encoder


def export_encoder(fcmae_workdir: str, out_dir: str, *, model_name: str) -> None:
  """Writes the encoder of an FCMAE workdir as a pretrained checkpoint without head (the format
  `python -m cnn_jax.convert` writes and `checkpoint.load_pretrained` reads), so a fine-tuning
  config loads it with `--config.init_from=OUT_DIR --config.init_head=drop`. Replaces an
  earlier export."""
  meta = {"model": model_name, "num_classes": None, "has_head": False, "head": ["head"],
          "source": "cnn_jax FCMAE encoder",
          "checkpoint": os.path.join(os.path.abspath(fcmae_workdir), "checkpoints")}
  checkpoint.write_pretrained(out_dir, encoder_params(fcmae_workdir), {}, meta, replace=True)
