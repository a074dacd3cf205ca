"""FCMAE: sparse semantics of the dense masked encoder, masking, loss, a digits run, images."""

from __future__ import annotations

import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from scipy.special import erf

from cnn_jax import checkpoint, fcmae, train
# Defines absl flags at import, as other tests do in a full session: the encoder export
# must not clash with them (importing the cnn_jax.convert CLI module would).
from cnn_jax import summary  # noqa: F401
from cnn_jax.models import create_model
from helpers import abstract_model, load_config, normal
from helpers import losses as run_losses

# A tiny ConvNeXt V2: stem 1x1, stages at 16/8/4/2 px for 16x16 images, so the mask is a 2x2
# grid of 8x8 patches and the 7x7 depthwise convs reach across patch borders at every stage.
TINY = dict(dims=(8, 8, 16, 16), depths=(1, 1, 2, 1), patch_size=1, in_channels=3,
            num_classes=10)
PATCH = 8


def tiny_fcmae(sparse: bool = True) -> fcmae.FCMAE:
  encoder = create_model("convnextv2_atto", rngs=nnx.Rngs(0), **TINY)
  model = fcmae.FCMAE(encoder, patch_size=PATCH, decoder_dim=16, decoder_depth=1,
                      sparse=sparse, rngs=nnx.Rngs(1))
  # GRN starts as the identity (gamma = beta = 0), biases at 0 and kernels small (std 0.02);
  # randomise them so the statistics, the bias re-fill of masked positions and the spatial
  # mixing are large enough for a leak to show.
  # In NumPy: with jax ops, op by op, every parameter shape compiles its own programs (seconds
  # of CPU), and a jitted draw compiles longer still.
  rng = np.random.default_rng(7)

  def randomise(path, x):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return jnp.asarray(20.0 * np.asarray(x))
    if any(part in name for part in ("gamma", "beta", "bias")):
      return jnp.asarray(np.asarray(x) + 0.5 * rng.standard_normal(x.shape, np.float32))
    return x

  nnx.update(model, jax.tree_util.tree_map_with_path(randomise, nnx.state(model, nnx.Param)))
  return model


# The model's calls jitted: op by op, each of the encoder's ops compiles as its own program
# (tens of seconds for the tests below). Compared outputs come from the same program.
@nnx.jit
def encoder_features(model: fcmae.FCMAE, images: jax.Array,
                     grid: jax.Array | None = None) -> jax.Array:
  return model.encoder.forward_features(images, grid)


@nnx.jit
def predictions(model: fcmae.FCMAE, images: jax.Array, visible: jax.Array) -> jax.Array:
  return model(images, visible)


def pixel_mask(visible: jax.Array, patch: int) -> jax.Array:
  return jnp.repeat(jnp.repeat(visible[..., None], patch, axis=1), patch, axis=2)


VISIBLE = jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]])
IMAGES = normal(0, (2, 16, 16, 3))
# Different pixels in the masked patches only.
OTHER_IMAGES = jnp.where(pixel_mask(VISIBLE, PATCH) > 0, IMAGES,
                         5.0 * normal(1, IMAGES.shape))


def test_masked_pixels_do_not_reach_visible_outputs():
  model = tiny_fcmae()
  grid = VISIBLE[..., None]
  a = encoder_features(model, IMAGES, grid)
  b = encoder_features(model, OTHER_IMAGES, grid)
  assert float(jnp.abs(a).max()) > 0.1
  np.testing.assert_array_equal(np.asarray(a * grid), np.asarray(b * grid))
  assert float(jnp.abs(a * (1 - grid)).max()) == 0.0  # masked positions stay empty
  # Without the mask the same change does reach the visible positions: the test can fail.
  a_dense = encoder_features(model, IMAGES)
  b_dense = encoder_features(model, OTHER_IMAGES)
  assert float(jnp.abs((a_dense - b_dense) * grid).max()) > 1e-3
  # The decoder's predictions at visible and masked positions alike ignore masked pixels.
  np.testing.assert_array_equal(np.asarray(predictions(model, IMAGES, VISIBLE)),
                                np.asarray(predictions(model, OTHER_IMAGES, VISIBLE)))


# ------------------------------------------------------------------ NumPy sparse reference


def _np(x) -> np.ndarray:
  return np.asarray(x[...], np.float64)


def _layer_norm(x: np.ndarray, norm) -> np.ndarray:
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * _np(norm.scale) + _np(norm.bias)


def _gelu(x: np.ndarray) -> np.ndarray:
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def sparse_encoder_reference(encoder, image: np.ndarray, visible: np.ndarray) -> dict:
  """One image through the encoder as a sparse conv net: features exist only at the active
  (visible) coordinates, convolutions sum only over active inputs and produce outputs only at
  active outputs, GRN norms run over active coordinates. Returns {(y, x): features}."""
  stem = encoder.stem
  s = stem.stride
  h, w = image.shape[0] // s, image.shape[1] // s
  scale = h // visible.shape[0]
  active = [(y, x) for y in range(h) for x in range(w) if visible[y // scale, x // scale]]
  kernel, bias = _np(stem.conv.kernel), _np(stem.conv.bias)
  feats = {}
  for y, x in active:  # The stem sees the full image, as in the official code.
    window = image[y * s:(y + 1) * s, x * s:(x + 1) * s]
    feats[(y, x)] = np.einsum("hwc,hwco->o", window, kernel) + bias
  feats = {c: _layer_norm(v, stem.norm) for c, v in feats.items()}

  for i, stage in enumerate(encoder.stages):
    if stage.downsample is not None:
      ds = stage.downsample
      normed = {c: _layer_norm(v, ds.norm) for c, v in feats.items()}
      k, b = _np(ds.conv.kernel), _np(ds.conv.bias)
      out = {}
      for (y, x), v in normed.items():
        coarse = (y // 2, x // 2)
        out[coarse] = out.get(coarse, b.copy()) + v @ k[y % 2, x % 2]
      feats = out
    for block in stage.blocks:
      k, b = _np(block.conv_dw.kernel)[:, :, 0, :], _np(block.conv_dw.bias)
      r = k.shape[0] // 2
      x = {}
      for (cy, cx) in feats:
        acc = b.copy()
        for dy in range(-r, r + 1):
          for dx in range(-r, r + 1):
            neighbour = feats.get((cy + dy, cx + dx))
            if neighbour is not None:
              acc = acc + neighbour * k[dy + r, dx + r]
        x[(cy, cx)] = acc
      coords = list(x)
      hidden = np.stack([_layer_norm(x[c], block.norm) for c in coords])
      hidden = _gelu(hidden @ _np(block.fc1.kernel) + _np(block.fc1.bias))
      gx = np.sqrt((hidden ** 2).sum(0, keepdims=True))  # over active coordinates only
      nx = gx / (gx.mean(-1, keepdims=True) + 1e-6)
      hidden = _np(block.grn.gamma) * (hidden * nx) + _np(block.grn.beta) + hidden
      hidden = hidden @ _np(block.fc2.kernel) + _np(block.fc2.bias)
      feats = {c: feats[c] + hidden[j] for j, c in enumerate(coords)}
  return feats


def test_dense_masked_encoder_equals_a_sparse_reference():
  model = tiny_fcmae()
  dense = np.asarray(encoder_features(model, IMAGES, VISIBLE[..., None]))
  for n in range(IMAGES.shape[0]):
    reference = sparse_encoder_reference(model.encoder, np.asarray(IMAGES[n], np.float64),
                                         np.asarray(VISIBLE[n]))
    assert sorted(reference) == [tuple(c) for c in np.argwhere(np.asarray(VISIBLE[n]) > 0)]
    for (y, x), v in reference.items():
      np.testing.assert_allclose(dense[n, y, x], v, rtol=1e-4, atol=1e-4)
  # The dense ablation (masked pixels zeroed once) lets masked positions fill up and leak
  # into the visible ones: it differs from the sparse network.
  dense_ablation = tiny_fcmae(sparse=False)
  leaky = encoder_features(dense_ablation, IMAGES * pixel_mask(VISIBLE, PATCH))
  assert float(jnp.abs((leaky - dense) * VISIBLE[..., None]).max()) > 1e-3


# ------------------------------------------------------------------ masking and loss


def test_mask_ratio_is_exact_per_image_and_random():
  visible = np.asarray(fcmae.random_visible_grid(jax.random.key(0), 64, (7, 7), 0.6))
  assert visible.shape == (64, 7, 7)
  np.testing.assert_array_equal(visible.reshape(64, -1).sum(1), 19)  # floor(49 * 0.4)
  assert len({row.tobytes() for row in visible}) == 64
  again = np.asarray(fcmae.random_visible_grid(jax.random.key(0), 64, (7, 7), 0.6))
  np.testing.assert_array_equal(visible, again)
  other = np.asarray(fcmae.random_visible_grid(jax.random.key(1), 64, (7, 7), 0.6))
  assert (other != visible).any()
  # Every position is hidden about 60% of the time.
  many = np.asarray(fcmae.random_visible_grid(jax.random.key(2), 4000, (4, 4), 0.75))
  np.testing.assert_array_equal(many.reshape(4000, -1).sum(1), 4)
  np.testing.assert_allclose(many.mean(0), 0.25, atol=0.03)
  assert fcmae.num_visible_patches(10, 0.9) == 1


def test_patchify_layout_and_inverse():
  images = normal(0, (2, 8, 12, 3))
  patches = fcmae.patchify(images, 4)
  assert patches.shape == (2, 2, 3, 48)
  np.testing.assert_array_equal(patches[1, 1, 2], images[1, 4:8, 8:12, :].reshape(-1))
  np.testing.assert_array_equal(fcmae.unpatchify(patches, 4, 3), images)


def test_targets_are_normalised_per_patch():
  images = 3.0 + 2.0 * normal(0, (2, 16, 16, 3))
  target = np.asarray(fcmae.patch_targets(images, 8, norm_pix_loss=True))
  np.testing.assert_allclose(target.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(target.var(-1, ddof=1), 1.0, rtol=1e-4)
  raw = np.asarray(fcmae.patch_targets(images, 8, norm_pix_loss=False))
  np.testing.assert_array_equal(raw, np.asarray(fcmae.patchify(images, 8)))


def test_loss_counts_masked_patches_only():
  images = normal(0, (2, 16, 16, 3))
  target = fcmae.patch_targets(images, 8, norm_pix_loss=True)
  visible = VISIBLE[..., None]
  noise = normal(1, target.shape)
  # Perfect on the masked patches, wrong on the visible ones: zero loss.
  pred = target + visible * noise
  loss = fcmae.reconstruction_loss(pred, images, VISIBLE, patch_size=8, norm_pix_loss=True)
  assert float(loss) == 0.0
  # Wrong on the masked patches: the mean of their per-patch MSEs (5 masked patches).
  pred = target + (1 - visible) * noise
  loss = fcmae.reconstruction_loss(pred, images, VISIBLE, patch_size=8, norm_pix_loss=True)
  per_patch = np.asarray(jnp.mean(noise ** 2, -1))
  masked = np.asarray(VISIBLE) == 0
  assert masked.sum() == 5
  assert float(loss) == pytest.approx(per_patch[masked].mean(), rel=1e-5)


# ------------------------------------------------------------------ images


def test_reconstruction_grid_layout():
  n, h, w = 3, 16, 16
  original = np.linspace(0.0, 1.0, n * h * w).reshape(n, h, w, 1).astype(np.float32)
  original[:, 0, 0] = 0.0
  original[:, -1, -1] = 1.0  # each row spans [0, 1], so the display scale is the identity
  visible = np.array([[[1.0, 0.0], [0.0, 1.0]]] * n)
  pixel_visible = np.asarray(pixel_mask(jnp.asarray(visible), 8))
  recon = 1.0 - original
  panels = {"original": original, "masked": np.where(pixel_visible > 0, original, np.nan),
            "reconstruction": recon,
            "reconstruction_visible": pixel_visible * original + (1 - pixel_visible) * recon}
  grid = fcmae.reconstruction_grid(panels)
  g = fcmae.GRID_GAP
  assert grid.shape == (n * (h + g) + g, 4 * (w + g) + g, 3) and grid.dtype == np.uint8

  def cell(row, col):
    top, left = g + row * (h + g), g + col * (w + g)
    return grid[top:top + h, left:left + w, 0].astype(np.float32) / 255

  for row in range(n):
    np.testing.assert_allclose(cell(row, 0), original[row, ..., 0], atol=1 / 255)
    masked_cell = cell(row, 1)
    np.testing.assert_allclose(masked_cell[:8, 8:], fcmae.MASKED_GRAY, atol=1 / 255)
    np.testing.assert_allclose(masked_cell[:8, :8], original[row, :8, :8, 0], atol=1 / 255)
    np.testing.assert_allclose(cell(row, 2), recon[row, ..., 0], atol=1 / 255)
    np.testing.assert_allclose(cell(row, 3)[8:, :8], recon[row, 8:, :8, 0], atol=1 / 255)
    np.testing.assert_allclose(cell(row, 3)[8:, 8:], original[row, 8:, 8:, 0], atol=1 / 255)
  assert (grid[:g] == 255).all() and (grid[:, :g] == 255).all()  # white gaps


def test_reconstruction_panels_paste_the_visible_pixels():
  model = tiny_fcmae()
  panels = jax.device_get(nnx.jit(fcmae.reconstruction_panels, static_argnames="norm_pix_loss")(
      model, IMAGES, VISIBLE, norm_pix_loss=True))
  pix = np.asarray(pixel_mask(VISIBLE, PATCH)) > 0
  np.testing.assert_array_equal(panels["original"], np.asarray(IMAGES))
  assert np.isnan(panels["masked"][~np.broadcast_to(pix, IMAGES.shape)]).all()
  pasted, recon = panels["reconstruction_visible"], panels["reconstruction"]
  full = np.broadcast_to(pix, IMAGES.shape)
  np.testing.assert_allclose(pasted[full], np.asarray(IMAGES)[full], atol=1e-6)
  np.testing.assert_allclose(pasted[~full], recon[~full], atol=1e-6)


# ------------------------------------------------------------------ runs


def small_pretrain_config(**overrides):
  return load_config("fcmae_convnextv2_digits", **{
      "model.dims": (16, 16, 32, 32), "model.depths": (1, 1, 1, 1),
      "fcmae.decoder_dim": 32, "data.batch_size": 32, "data.eval_batch_size": 128,
      "total_steps": 60, "log_every_steps": 10, "eval_every_steps": 60,
      "fcmae.reconstruction_every_steps": 30, "fcmae.num_reconstructions": 4,
      "optimizer.learning_rate": 2e-2, "schedule.warmup_epochs": 0.1,
      "checkpoint.every_steps": 60,
      # One device: 8 fake ones on 2 cores cost CPU time, and the sharding is not what it checks.
      "mesh.num_devices": 1, **overrides})


@pytest.fixture(scope="module")
def pretrained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("fcmae"))
  final = fcmae.pretrain(small_pretrain_config(), workdir)
  return workdir, final


def test_fcmae_run_on_digits_learns_and_writes_reconstructions(pretrained_workdir):
  workdir, final = pretrained_workdir
  losses = run_losses(workdir)
  assert len(losses) == 6 and losses[-1] < losses[0], losses
  # The 20 % drop on the held-out loss: the last train window's loss sits at the line itself
  # on some CPUs, where another's rounding could cross it (stop 44's notes have the figures).
  assert np.isfinite(final["loss"]) and final["loss"] < 0.8 * losses[0], (final, losses)
  pngs = sorted(os.listdir(os.path.join(workdir, "reconstructions")))
  assert pngs == ["step_0000030.png", "step_0000060.png"]
  image = np.asarray(Image.open(os.path.join(workdir, "reconstructions", pngs[-1])))
  g = fcmae.GRID_GAP
  assert image.shape == (4 * (32 + g) + g, 4 * (32 + g) + g, 3)
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.isfile(os.path.join(workdir, fcmae.ENCODER_DIR, "pretrained.json"))


def test_a_finished_fcmae_run_resumes_to_the_same_eval_loss(pretrained_workdir, tmp_path):
  # The rerun of a finished run restores its last checkpoint into a model that was only traced
  # (encoder and decoder) and evaluates it: the same loss, bit for bit.
  workdir, final = pretrained_workdir
  rerun = str(tmp_path / "rerun")
  shutil.copytree(workdir, rerun)
  assert fcmae.pretrain(small_pretrain_config(), rerun) == final


def finetune_config(encoder_dir: str):
  return load_config("convnextv2_digits_finetune", **{
      "model.dims": (16, 16, 32, 32), "model.depths": (1, 1, 1, 1), "init_from": encoder_dir,
      "data.batch_size": 32, "data.eval_batch_size": 128, "total_steps": 4,
      "log_every_steps": 2, "eval_every_steps": 4, "checkpoint.every_steps": 4,
      "schedule.warmup_epochs": 0.0})


def test_finetune_config_loads_the_pretrained_encoder(pretrained_workdir):
  workdir, _ = pretrained_workdir
  config = finetune_config(os.path.join(workdir, fcmae.ENCODER_DIR))
  pretrained = fcmae.encoder_params(workdir)
  assert ("stem", "conv", "kernel") in pretrained
  assert not any(path[0] == "head" for path in pretrained)
  _, _, params, model_state = train.split_model(train.build_model(config))
  loaded, _ = checkpoint.load_pretrained(params, model_state, config.init_from,
                                         init_head=config.init_head)
  loaded = {tuple(str(k) for k in path): v[...] for path, v in loaded.flat_state()}
  fresh = {tuple(str(k) for k in path): v[...] for path, v in params.flat_state()}
  assert set(pretrained) == {path for path in loaded if path[0] != "head"}
  for path, value in pretrained.items():
    np.testing.assert_array_equal(np.asarray(loaded[path]), value)
  # The classifier starts fresh, at the recipe's head init scale.
  np.testing.assert_array_equal(loaded[("head", "fc", "kernel")], fresh[("head", "fc", "kernel")])
  assert float(jnp.abs(loaded[("head", "fc", "kernel")]).max()) < 0.01


def test_finetune_starts_from_the_same_state_without_drawing_the_encoder(pretrained_workdir):
  """The loop builds an init_from model with placeholders for the encoder's weights and draws
  only the new head (train._build_for_init_from): the state it starts from is bit-equal to a
  fully drawn model's with the encoder loaded into it."""
  workdir, _ = pretrained_workdir
  config = finetune_config(os.path.join(workdir, fcmae.ENCODER_DIR))
  read = checkpoint.read_pretrained(config.init_from)
  states = []
  for model in (train.build_model(config),
                train._build_for_init_from(train.CLASSIFICATION, config, read)):
    _, _, params, model_state = train.split_model(model)
    states.append(checkpoint.load_pretrained(params, model_state, config.init_from,
                                             config.init_head, read=read))
  (full_params, full_rest), (params, rest) = states
  assert jax.tree.structure(params) == jax.tree.structure(full_params)
  assert jax.tree.structure(rest) == jax.tree.structure(full_rest)
  for a, b in zip(jax.tree.leaves((params, rest)), jax.tree.leaves((full_params, full_rest)),
                  strict=True):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # ~25 s on 2 cores; the key restore alone: test_training_at_scale
def test_finetune_from_fcmae_runs_end_to_end_and_its_rerun_restores_it(pretrained_workdir,
                                                                       tmp_path):
  # The fine-tuning recipe has drop path: its RNG streams are typed keys in the checkpoint, and
  # the rerun of the finished run restores them with the rest into a model only traced.
  workdir, _ = pretrained_workdir
  config = finetune_config(os.path.join(workdir, fcmae.ENCODER_DIR))
  assert config.model.drop_path_rate > 0
  final = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final["loss"]) and 0.0 <= final["accuracy"] <= 1.0
  assert np.isfinite(final["ema_loss"])
  assert train.train_and_evaluate(config, str(tmp_path)) == final

def test_convnext_layer_ids_follow_the_official_single_layer_decay():
  model = abstract_model("convnextv2_atto")
  assert model.lr_num_layers == 12
  assert model.lr_layer_id(("stem", "conv", "kernel")) == 1
  assert model.lr_layer_id(("stages", "0", "blocks", "1", "fc1", "kernel")) == 2
  assert model.lr_layer_id(("stages", "2", "downsample", "conv", "kernel")) == 5
  assert model.lr_layer_id(("stages", "2", "blocks", "5", "grn", "gamma")) == 10
  assert model.lr_layer_id(("stages", "3", "blocks", "1", "fc2", "bias")) == 12
  assert model.lr_layer_id(("head", "fc", "kernel")) == 13


def test_bad_fcmae_settings_are_user_errors():
  from cnn_jax.errors import UserError
  small = {"model.dims": (8, 8, 8, 8), "model.depths": (1, 1, 1, 1)}
  with pytest.raises(UserError, match="must equal the encoder's total stride 8"):
    fcmae.build_model(load_config("fcmae_convnextv2_digits", **small, **{"fcmae.patch_size": 4}))
  with pytest.raises(UserError, match="mask_ratio"):
    fcmae.build_model(load_config("fcmae_convnextv2_digits", **small,
                                  **{"fcmae.mask_ratio": 1.0}))
  with pytest.raises(UserError, match="needs a ConvNeXt encoder"):
    fcmae.build_model(load_config("lenet5_digits", **{"fcmae.patch_size": 8}))


def test_cli_rejects_an_unknown_task(tmp_path):
  from helpers import run_cli
  result = run_cli("cnn_jax.main", "--config", "configs/fcmae_convnextv2_digits.py",
                   "--workdir", str(tmp_path), "--config.task=regression")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: unknown task 'regression'; choose classification or fcmae"]
