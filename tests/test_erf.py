"""cnn_jax.erf: the ERF of known conv stacks, the area ratios, the CLI."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnn_jax import cli, erf
from cnn_jax.errors import UserError
from helpers import REPO_ROOT, run_cli, saved_tree


PlainConvStack = cli.load_module(
    os.path.join(REPO_ROOT, "experiments", "erf", "erf_experiment.py")).PlainConvStack


def positive_stack(depth: int) -> nnx.Module:
  """The ERF experiment's stack with positive weights: on positive inputs no gradient cancels
  by chance, so the ERF's support is exactly the theoretical receptive field."""
  return PlainConvStack(depth, 2, 0, kernel_init=nnx.initializers.uniform(0.5))


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_erf_support_of_a_3x3_stack_is_the_theoretical_receptive_field(depth):
  images = np.abs(np.random.default_rng(0).standard_normal((3, 21, 21, 1))).astype(np.float32)
  erf_map = erf.erf_map(positive_stack(depth), images, batch_size=2)
  assert erf.support_side(erf_map) == 2 * depth + 1
  nonzero = erf_map > 0
  c, r = 10, depth
  assert nonzero[c - r:c + r + 1, c - r:c + r + 1].all()  # the whole square, not just its rim
  assert nonzero.sum() == (2 * depth + 1) ** 2


def test_area_ratios_are_monotone_and_exact_on_a_known_map():
  log_map = np.zeros((11, 11))
  log_map[5, 5] = 1.0            # 1/9 of the total at the centre
  log_map[4:7, 4:7] += 1.0       # 3x3 square: 10/18 with the centre
  log_map[0, 0] = 8.0            # a far corner: only the whole image reaches 100 %
  ratios = erf.area_ratios(log_map / log_map.max(), (0.05, 0.3, 0.5, 0.99))
  assert ratios == {"0.05": pytest.approx(1 / 121), "0.3": pytest.approx(9 / 121),
                    "0.5": pytest.approx(9 / 121), "0.99": 1.0}


def test_ratios_of_a_random_deep_stack_grow_with_the_threshold():
  images = np.random.default_rng(1).standard_normal((4, 33, 33, 1)).astype(np.float32)
  log_map = erf.normalised_log_map(erf.erf_map(PlainConvStack(6, 4, 0), images))
  assert log_map.max() == pytest.approx(1.0)
  ratios = list(erf.area_ratios(log_map).values())
  assert all(a <= b for a, b in zip(ratios, ratios[1:]))
  assert ratios[0] < ratios[-1] <= (13 / 33) ** 2 + 1e-12  # inside the 13x13 theoretical RF


def test_vit_tokens_are_laid_out_on_their_grid():
  class Tokens(nnx.Module):
    def forward_features(self, x):  # (N, 4, 4, 2) -> class token + 16 patch tokens
      tokens = x.reshape(x.shape[0], 16, 2)
      return jnp.concatenate([jnp.zeros_like(tokens[:, :1]), tokens], axis=1)

  features = erf.feature_map(Tokens(), jnp.arange(64.0).reshape(2, 4, 4, 2))
  np.testing.assert_array_equal(features, jnp.arange(64.0).reshape(2, 4, 4, 2))


def test_model_without_forward_features_is_a_user_error():
  with pytest.raises(UserError, match="forward_features"):
    erf.erf_map(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), np.zeros((1, 4, 4, 1), np.float32))


@pytest.mark.slow  # a subprocess that imports JAX and compiles ResNet-20's gradient
def test_cli_writes_png_json_and_ratios(tmp_path):
  out = str(tmp_path / "erf")
  result = run_cli("cnn_jax.erf", "--model=resnet20", "--image_size=32", "--num_images=2",
                   "--in_channels=1", f"--out={out}", env={"XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr
  assert "area ratio" in result.stdout
  summary = json.load(open(os.path.join(out, "erf.json")))
  ratios = list(summary["area_ratios"].values())
  assert len(ratios) == 4 and all(0 < a <= b <= 1 for a, b in zip(ratios, ratios[1:]))
  assert open(os.path.join(out, "erf.png"), "rb").read(4) == b"\x89PNG"
  assert np.load(os.path.join(out, "erf.npy")).shape == (32, 32)


def test_cli_unknown_model_is_one_line_and_exit_2(tmp_path):
  result = run_cli("cnn_jax.erf", "--model=resnet21", f"--out={tmp_path}")
  assert result.returncode == 2
  assert result.stderr.startswith("error: unknown model 'resnet21'")
  assert result.stderr.strip().count("\n") == 0


def test_load_run_restores_the_latest_checkpoints_weights(tmp_path):
  from cnn_jax import train
  from helpers import load_config

  config = load_config("lenet5_digits", total_steps=3, log_every_steps=1, eval_every_steps=3,
                       **{"checkpoint.every_steps": 3, "schedule.warmup_epochs": 0.0,
                          "mesh.num_devices": 1, "optimizer.learning_rate": 0.05})
  train.train_and_evaluate(config, str(tmp_path))
  trained, loaded_config = train.load_run(str(tmp_path), best=False)  # what erf --checkpoint loads
  assert loaded_config.model.name == "lenet5"
  initial = nnx.state(train.build_model(config), nnx.Param).to_pure_dict()
  restored = nnx.state(trained, nnx.Param).to_pure_dict()
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(initial),
                                                   jax.tree.leaves(restored))]
  assert all(changed)  # every parameter moved in 3 steps at lr 0.05, and the load kept that
  saved = saved_tree(tmp_path / "checkpoints" / "3" / "default")
  saved_leaves = jax.tree.leaves(saved["params"])
  assert len(saved_leaves) == len(jax.tree.leaves(restored))
  for leaf in jax.tree.leaves(restored):  # each restored array is one of the saved ones
    assert any(np.array_equal(leaf, s) for s in saved_leaves if np.shape(s) == np.shape(leaf))


def test_a_vit_trained_with_cudnns_attention_loads_on_a_cpu(tmp_path):
  """A run on a GPU with attention_impl='cudnn' (its config.json and a checkpoint written here
  as such a run writes them; this CPU cannot build that model) loads on a CPU with this
  process's attention, its weights those saved."""
  from cnn_jax import checkpoint, train
  from helpers import load_config

  config = load_config("zoo_digits", "vit_tiny_patch4_32",
                       **{"model.embed_dim": 16, "model.depth": 1, "model.num_heads": 2})
  model = train.build_model(config)
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  _, schedule = train.run_schedule(config, 10)
  state = train.create_train_state(config, params, model_state,
                                   train.build_optimizer(config, schedule, model, params))
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  ckpt.save(1, state, force=True)
  ckpt.close()
  config.model.attention_impl = "cudnn"
  (tmp_path / "config.json").write_text(config.to_json_best_effort())

  loaded, loaded_config = train.load_run(str(tmp_path), best=False)
  assert loaded_config.model.attention_impl == "auto"
  assert loaded.blocks[0].attn.attention_impl == "auto"
  restored = jax.tree.leaves(nnx.state(loaded, nnx.Param))
  for saved, loaded_leaf in zip(jax.tree.leaves(params), restored, strict=True):
    np.testing.assert_array_equal(saved, loaded_leaf)


def test_checkpoint_that_is_not_a_workdir_is_a_user_error(tmp_path):
  from cnn_jax import train

  with pytest.raises(UserError, match="not a training workdir"):
    train.load_run(str(tmp_path))


def test_the_command_line_tools_import_together():
  # Flags are defined when a tool runs, not at import: one process may import them all.
  import importlib
  for name in ("cnn_jax.summary", "cnn_jax.main", "cnn_jax.sweep", "cnn_jax.erf"):
    importlib.import_module(name)


def test_cli_checkpoint_measures_at_the_runs_input(tmp_path):
  """erf --checkpoint of a run on one-channel 32 px digits, without --image_size: the ERF is
  measured on the run's input (a 224 px RGB image would not fit its stem)."""
  from cnn_jax import train
  from helpers import learning_run_config, run_cli_in_process

  # test_train's BatchNorm check runs the same steps: compiled once for the session.
  config = learning_run_config("resnet20", halt_after_steps=2, log_every_steps=1,
                               eval_every_steps=2, **{"checkpoint.every_steps": 2})
  assert (config.data.image_size, config.model.in_channels) == (32, 1)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  out = tmp_path / "erf"
  result = run_cli_in_process("cnn_jax.erf", f"--checkpoint={tmp_path / 'run'}",
                              "--num_images=2", "--batch_size=2", f"--out={out}")
  assert result.returncode == 0, result.stderr
  with open(out / "erf.json") as f:
    assert json.load(f)["image_size"] == 32
  erf_map = np.load(out / "erf.npy")
  assert erf_map.shape == (32, 32) and erf_map.max() > 0
