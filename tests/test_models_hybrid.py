"""Conv-attention hybrids: shapes, exact parameter counts, global mixing, and they learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax import summary, train
from cnn_jax.errors import UserError
from cnn_jax.models import create_model, hybrid
from cnn_jax.models.layers import count_params
from helpers import abstract_apply, abstract_model, compiled_apply, initialized
from helpers import load_config, normal
from helpers import losses as run_losses


def longrange_config(arg):
  """configs/longrange.py's get_config(arg): the model key and distance come in the arg."""
  return load_config("longrange", arg)


# Exact counts at 224 px, 3 channels, 1000 classes, and what each is matched against.
@pytest.mark.parametrize("name,params,reference", [
    ("hybrid_atto", 3_563_600, "convnextv2_atto"),
    ("hybrid_tiny", 5_924_632, "vit_tiny_patch16_224"),
    ("hybrid_nano", 15_915_320, "convnextv2_nano"),
])
def test_parameter_counts_are_exact_and_within_5_percent_of_the_reference(name, params, reference):
  assert count_params(abstract_model(name)) == params
  ref = count_params(abstract_model(reference))
  assert abs(params - ref) / ref < 0.05


def test_summary_counts_the_hybrid():
  result = summary.summarize("hybrid_micro")
  assert result["image_size"] == 64 and result["params"] == 699_960
  assert {row["name"] for row in result["stages"]} >= {"stem", "stages", "head"}


def test_the_experiment_models_are_matched_in_parameters():
  keys = ("convnext_micro", "convnext_micro_bn", "hybrid_micro", "vit_micro", "resnet_micro")
  counts = {key: count_params(nnx.eval_shape(
      lambda key=key: train.build_model(longrange_config(f"{key},14")))) for key in keys}
  # BN's affine pair replaces LN's; the convs in front of a BN lose their biases.
  assert counts == {"convnext_micro": 571_346, "convnext_micro_bn": 570_594,
                    "hybrid_micro": 570_594, "vit_micro": 572_162, "resnet_micro": 506_802}


def test_the_canvas_argument_builds_the_models_for_it():
  config = longrange_config("hybrid_micro,80,96")
  assert config.data.image_size == 96 and config.model.image_size == 96
  assert config.data.long_range.distance == 80
  model = nnx.eval_shape(lambda: train.build_model(config))
  assert model.stages[3].grid == (3, 3)


def test_norm_bn_puts_batchnorm_in_the_conv_part_only():
  model = abstract_model("hybrid_micro", norm="bn")  # the layer types need no weights
  assert isinstance(model.stem.norm, nnx.BatchNorm)
  assert isinstance(model.stages[1].downsample.norm, nnx.BatchNorm)
  assert isinstance(model.stages[1].blocks[0].norm, nnx.BatchNorm)
  assert isinstance(model.stages[2].downsample.norm, nnx.BatchNorm)
  assert isinstance(model.stages[2].blocks[0].norm1, nnx.LayerNorm)
  assert isinstance(model.head.norm, nnx.LayerNorm)


@pytest.mark.parametrize("norm", ["ln", "bn"])
def test_an_all_conv_hybrid_is_the_convnext_v2_of_its_stages(norm):
  """The diagnosis's control: without attention stages the hybrid is convnextv2, value for
  value, so a hybrid that trains worse than that ConvNeXt cannot blame its conv part."""
  kw = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), norm=norm, num_classes=3,
            in_channels=1)
  hyb = create_model("hybrid_micro", stage_types=("conv",) * 4, image_size=32,
                     rngs=nnx.Rngs(0), **kw)
  ref = create_model("convnextv2_atto", rngs=nnx.Rngs(0), **kw)
  x = normal(1, (4, 32, 32, 1))
  # Features, not logits: with norm="bn" ConvNeXt's head norm is a BN too, the hybrid's an LN.
  np.testing.assert_allclose(compiled_apply(hyb, x, method="forward_features"),
                             compiled_apply(ref, x, method="forward_features"), rtol=1e-5,
                             atol=1e-6)


def test_parameter_count_by_hand_for_one_attention_stage():
  # One attention stage of width 64 on a 2x2 grid after a conv stage of width 32:
  # downsample LN(32) + 2x2 conv 32->64 + pos table 4x64 + one ViT block 12 d^2 + 13 d.
  model = nnx.eval_shape(lambda: hybrid.Hybrid(
      depths=(1, 1), dims=(32, 64), stage_types=("conv", "attn"), image_size=16, patch_size=4,
      num_classes=10, in_channels=1, rngs=nnx.Rngs(0)))  # counts need no weights
  d = 64
  stage = 2 * 32 + (4 * 32 * d + d) + 4 * d + (12 * d * d + 13 * d)
  assert count_params(model.stages[1]) == stage


def test_shapes_and_the_grid_of_each_stage():
  # Shapes by tracing alone (jax.eval_shape): the grid check is Python at trace time.
  model = abstract_model("hybrid_micro", num_classes=7, in_channels=1)
  assert abstract_apply(model, (2, 64, 64, 1)).shape == (2, 7)
  assert abstract_apply(model, (2, 64, 64, 1), method="forward_features").shape == (2, 2, 2, 128)
  assert [type(s).__name__ for s in model.stages] == ["Stage", "Stage", "AttentionStage",
                                                      "AttentionStage"]
  assert model.stages[2].grid == (4, 4) and model.stages[3].grid == (2, 2)
  assert model.stages[2].blocks[0].attn.num_heads == 2  # 64 wide, 32 per head
  with pytest.raises(ValueError, match="built for 64x64"):
    abstract_apply(model, (1, 32, 32, 1))


def test_one_attention_block_mixes_opposite_corners():
  """A conv-only net with one 3x3 stage cannot connect corners; the attention stage does."""
  def build(stage_types):
    return initialized(lambda rngs: hybrid.Hybrid(
        depths=(1, 1), dims=(32, 32), stage_types=stage_types, image_size=32, patch_size=4,
        kernel_size=3, num_classes=4, in_channels=1, rngs=rngs))

  model = build(("conv", "attn"))
  model.eval()

  # Jitted: one compile per program instead of op-by-op dispatch, several times cheaper on CPU.
  corner_grad = nnx.jit(lambda m, x: jax.grad(lambda x: m.forward_features(x)[0, 0, 0].sum())(x))
  x = normal(0, (1, 32, 32, 1))
  grad = corner_grad(model, x)
  assert float(jnp.abs(grad[0, -8:, -8:]).sum()) > 0  # the far corner reaches the first token
  conv_only = build(("conv", "conv"))
  grad = corner_grad(conv_only, x)
  assert float(jnp.abs(grad[0, -8:, -8:]).sum()) == 0


def test_bad_options_are_user_errors():
  with pytest.raises(UserError, match="conv stages must come first"):
    create_model("hybrid_micro", stage_types=("conv", "attn", "conv", "attn"),
                 rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match="not divisible by the total stride"):
    create_model("hybrid_micro", image_size=40, rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match="head width"):
    create_model("hybrid_micro", dims=(16, 32, 48, 128), rngs=nnx.Rngs(0))


def _local_control(tmp_path, model_key, **overrides):
  """Trains `model_key` of configs/longrange.py on the distance-14 task (digits side by side)."""
  config = longrange_config(f"{model_key},14")
  options = {"data.image_size": 32, "model.image_size": 32,
             "optimizer.learning_rate": 3e-3, "optimizer.weight_decay": 0.0,
             "schedule.warmup_epochs": 0.5, "log_every_steps": 4, "checkpoint.every_steps": 1000,
             **overrides}
  for key, value in options.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  final = train.train_and_evaluate(config, str(tmp_path))
  return final, run_losses(tmp_path)


def test_hybrid_trains_end_to_end(tmp_path):
  """cnn_jax's loop trains the hybrid on the long-range data and evaluates it.

  One conv stage and one attention stage of one block each (C-T, both kinds of stage): most of
  this test is compiling the initialiser and the train and eval steps, which grows with the
  number of blocks."""
  final, losses = _local_control(tmp_path, "hybrid_micro", **{
      "model.depths": (1, 1), "model.dims": (16, 32), "model.stage_types": ("conv", "attn"),
      "data.long_range.num_train": 64, "data.long_range.num_eval": 32,
      "data.batch_size": 32, "data.eval_batch_size": 32, "total_steps": 4,
      "log_every_steps": 1, "eval_every_steps": 4, "mesh.num_devices": 1})
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert 0.0 <= final["accuracy"] <= 1.0
  assert (tmp_path / "final_metrics.json").exists()


# Slow: 39 s at a load average of 3 on the 2-core machine (minutes at load 13), over the 30 s
# per-test budget; with LN conv stages the hybrid stays at chance here.
@pytest.mark.slow
def test_hybrid_learns_the_local_control(tmp_path):
  """Held-out canvases of unseen digits, well above chance (50%) after 120 steps.

  With LayerNorm in its conv stages (ConvNeXt V2's) the hybrid stayed at chance here; the
  config's BatchNorm is what lets it learn (experiments/long_range/README.md)."""
  final, losses = _local_control(tmp_path, "hybrid_micro", **{
      "data.long_range.num_train": 2000, "data.long_range.num_eval": 400,
      "data.eval_batch_size": 200, "total_steps": 120, "eval_every_steps": 1000,
      "optimizer.learning_rate": 1e-3, "schedule.warmup_epochs": 0.3,
      "log_every_steps": 20, "mesh.num_devices": 1})
  assert final["accuracy"] > 0.75
  assert losses[-1] < 0.6
