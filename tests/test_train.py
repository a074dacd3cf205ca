"""The training loop: it learns, 1 device equals 8, and resume equals an uninterrupted run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import checkpoint, metrics, timing, train
from cnn_jax.errors import UserError
from cnn_jax.models import registry
from helpers import (ONE_DEVICE, SHARED_8_DEVICE_RUN, cut_short, final_params, learning_run_config,
                     load_config, read_jsonl, saved_tree)


def test_training_learns_on_real_digits(tmp_path):
  config = load_config("lenet5_digits", num_epochs=4, **ONE_DEVICE)
  final = train.train_and_evaluate(config, str(tmp_path))
  log = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
  assert log[-1]["train/loss"] < 0.5 * log[0]["train/loss"]
  assert final["accuracy"] > 0.85  # chance is 0.10
  assert (tmp_path / "final_metrics.json").exists()
  # TensorBoard (`tensorboard --logdir`) reads back every scalar of metrics.jsonl at its step.
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  board = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
  board.Reload()
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert set(board.Tags()["scalars"]) == {k for r in records for k in r} - {"step"}
  for record in records:
    for tag, value in record.items():
      if tag != "step":
        [event] = [e for e in board.Scalars(tag) if e.step == record["step"]]
        assert event.value == pytest.approx(value, rel=1e-6)
  assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "lenet5"
  # Where the run's time went: one record at the last step, the phases it names all measured.
  [times] = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "time/steps_s" in r]
  assert times["step"] == log[-1]["step"]
  phases = ("setup", "first_step", "steps", "eval", "checkpoint_wait")
  assert set(times) == {"step"} | {f"time/{p}{cpu}_s" for p in phases for cpu in ("", "_cpu")}
  assert all(times[f"time/{p}{cpu}_s"] > 0 for p in phases[:4] for cpu in ("", "_cpu"))
  assert all(r["train/images_per_sec"] > 0 for r in log)


def test_images_per_sec_leaves_out_the_first_step(tmp_path):
  # Logged every step: the first step's window (compilation) has no rate, the others have one.
  config = load_config("lenet5_digits", halt_after_steps=3, log_every_steps=1,
                       eval_every_steps=3, **SHARED_8_DEVICE_RUN)
  train.train_and_evaluate(config, str(tmp_path))
  log = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
  assert [r["step"] for r in log] == [1, 2, 3]
  assert "train/images_per_sec" not in log[0]
  assert all(0 < r["train/images_per_sec"] < 1e7 for r in log[1:])


def test_window_means_are_the_on_device_running_sums():
  # The loop logs metrics.window_means of the window's per-step metrics; it used to keep a
  # running sum on the device (jnp.add per step): the logged figures must be the same bits.
  rng = np.random.default_rng(0)
  window = [{"loss": jax.numpy.asarray(rng.uniform(0, 3), np.float32),
             "accuracy": jax.numpy.asarray(rng.uniform(), np.float32)} for _ in range(7)]
  running = window[0]
  for step_metrics in window[1:]:
    running = jax.tree.map(jax.numpy.add, running, step_metrics)
  expected = {k: float(v) / len(window) for k, v in jax.device_get(running).items()}
  assert metrics.window_means(window) == expected
  assert metrics.window_means(window[:1]) == {k: float(v) for k, v in window[0].items()}


def test_the_time_line_gives_per_step_figures_only_when_steps_followed_the_first():
  times = {"time/setup_s": 2.0, "time/first_step_s": 5.0, "time/steps_s": 3.0,
           "time/steps_cpu_s": 4.5, "time/eval_s": 1.0, "time/checkpoint_wait_s": 0.5}
  assert timing.loop_time_summary(times, 10) == (
      "time: setup 2.0 s, compile + first step 5.0 s, 10 more steps 3.0 s (300.0 ms/step, "
      "450.0 ms CPU, with data, metrics and checkpoints), eval 1.0 s, final checkpoint wait "
      "0.5 s")
  # A run halted after its first step: no rate of nothing.
  assert timing.loop_time_summary({**times, "time/steps_s": 0.0}, 0) == (
      "time: setup 2.0 s, compile + first step 5.0 s, 0 more steps 0.0 s, eval 1.0 s, final "
      "checkpoint wait 0.5 s")


def test_one_device_and_eight_devices_give_the_same_losses(tmp_path):
  # And on 8 devices with data.crop_on_device (each device cuts its rows' crops from the
  # replicated set): the same run as the host's crops, bit for bit.
  assert jax.device_count() == 8, "conftest.py sets 8 fake CPU devices"
  runs = {}
  for n, crop_on_device in ((1, False), (8, False), (8, True)):
    config = load_config("lenet5_digits", log_every_steps=1, eval_every_steps=12,
                         **{"mesh.num_devices": n, "data.max_shift": 2,
                            "data.crop_on_device": crop_on_device, **SHARED_8_DEVICE_RUN})
    workdir = str(tmp_path / f"dev{n}_{crop_on_device}")
    final = train.train_and_evaluate(config, workdir)
    losses = [r["train/loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "train/loss" in r]
    runs[n, crop_on_device] = (losses, final, final_params(workdir)[1])
  one, eight, cut = runs[1, False], runs[8, False], runs[8, True]
  assert len(one[0]) == 12
  np.testing.assert_allclose(one[0], eight[0], rtol=2e-5, atol=1e-6)
  assert one[1]["accuracy"] == pytest.approx(eight[1]["accuracy"], abs=1 / 300)
  for key, value in one[2].items():
    np.testing.assert_allclose(value, eight[2][key], rtol=1e-4, atol=1e-5, err_msg=key)
  assert cut[0] == eight[0] and cut[1] == eight[1]
  for key, value in eight[2].items():
    np.testing.assert_array_equal(value, cut[2][key], err_msg=key)


def test_stop_and_resume_equals_uninterrupted(tmp_path):
  overrides = dict(log_every_steps=5, eval_every_steps=12,
                   **{"checkpoint.every_steps": 4, **SHARED_8_DEVICE_RUN})
  train.train_and_evaluate(load_config("lenet5_digits", **overrides), str(tmp_path / "full"))

  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(load_config("lenet5_digits", halt_after_steps=7, **overrides), resumed)
  assert final_params(resumed)[0] == 7  # halted, checkpoint written at the halt
  assert not os.path.exists(os.path.join(resumed, "final_metrics.json"))
  final = train.train_and_evaluate(load_config("lenet5_digits", **overrides), resumed)

  step_full, params_full = final_params(str(tmp_path / "full"))
  step_resumed, params_resumed = final_params(resumed)
  assert step_full == step_resumed == 12
  for key, value in params_full.items():
    np.testing.assert_array_equal(value, params_resumed[key], err_msg=key)
  full_final = json.loads((tmp_path / "full" / "final_metrics.json").read_text())
  assert final["loss"] == full_final["loss"]


def test_a_resume_draws_no_weight_and_restores_every_leaf(tmp_path, monkeypatch):
  # A resume only traces the model and the state for their structure and reads the checkpoint
  # into them. test_zoo_training's resnet20 learning run (its compiled steps, from the
  # session's cache): BatchNorm statistics and the optimizer's momentum come from the checkpoint.
  # (Typed RNG keys and sharded targets: test_training_at_scale.)
  def run(workdir, halt_after_steps):
    config = learning_run_config("resnet20", halt_after_steps=halt_after_steps,
                                 log_every_steps=2, eval_every_steps=40,
                                 **{"checkpoint.every_steps": 2})
    train.train_and_evaluate(config, str(workdir))

  run(tmp_path / "full", 4)
  run(tmp_path / "resumed", 2)

  def no_initialiser(*args, **kwargs):
    raise AssertionError("a resume compiled the model's initialisers")

  targets = []
  restore_latest = checkpoint.Checkpointer.restore_latest

  def recording(self, state_like):
    targets.append(state_like)
    return restore_latest(self, state_like)

  monkeypatch.setattr(registry, "_cached_compile", no_initialiser)
  monkeypatch.setattr(checkpoint.Checkpointer, "restore_latest", recording)
  run(tmp_path / "resumed", 2)
  [target] = targets
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(target))
  jax.tree.map(np.testing.assert_array_equal, saved_tree(tmp_path / "full/checkpoints/4/default"),
               saved_tree(tmp_path / "resumed/checkpoints/4/default"))


# The failed read's other reads finish in tensorstore's threads; those collected after the
# restore reach pytest's own hook, not the one the restore leaves in place.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, capsys):
  overrides = dict(log_every_steps=5, eval_every_steps=12,
                   **{"checkpoint.every_steps": 4, **SHARED_8_DEVICE_RUN})
  train.train_and_evaluate(load_config("lenet5_digits", **overrides), str(tmp_path / "full"))
  run = tmp_path / "run"
  train.train_and_evaluate(load_config("lenet5_digits", halt_after_steps=9, **overrides), str(run))
  assert sorted(os.listdir(run / "checkpoints")) == ["4", "8", "9"]
  cut_short(run / "checkpoints" / "9")
  capsys.readouterr()

  final = train.train_and_evaluate(load_config("lenet5_digits", **overrides), str(run))
  err = capsys.readouterr().err
  assert "warning: the checkpoint at step 9 cannot be read (" in err
  assert f"moved it to {run / 'checkpoints_unreadable' / '9'}" in err
  assert "Traceback" not in err and "Event loop is closed" not in err
  assert os.listdir(run / "checkpoints_unreadable") == ["9"]
  step_full, params_full = final_params(str(tmp_path / "full"))
  step_resumed, params_resumed = final_params(str(run))
  assert step_full == step_resumed == 12
  for key, value in params_full.items():
    np.testing.assert_array_equal(value, params_resumed[key], err_msg=key)
  assert final["loss"] == json.loads((tmp_path / "full" / "final_metrics.json").read_text())["loss"]

  # None readable: one line, and nothing moved.
  steps = sorted(os.listdir(run / "checkpoints"))
  for step in steps:
    cut_short(run / "checkpoints" / step)
  with pytest.raises(UserError, match=rf"none of the {len(steps)} checkpoints in .* can be read "
                                      r"\(step 12: "):
    train.train_and_evaluate(load_config("lenet5_digits", **overrides), str(run))
  assert sorted(os.listdir(run / "checkpoints")) == steps
  assert os.listdir(run / "checkpoints_unreadable") == ["9"]


def test_batch_not_divisible_by_devices_is_a_user_error(tmp_path):
  config = load_config("lenet5_digits", **{"data.batch_size": 60})
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match="not divisible by the 8 devices"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()  # refused before the run takes its workdir


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # as above
def test_a_checkpoint_that_does_not_fit_the_state_is_named_in_one_line(tmp_path):
  saved = {"params": {"conv": jnp.zeros((3, 3, 8)), "bias": jnp.zeros(8)}, "step": jnp.int32(1)}
  ckpt = checkpoint.Checkpointer(str(tmp_path), load_config("lenet5_digits"))
  ckpt.save(1, saved, force=True)
  ckpt.wait()
  try:
    wider = {**saved, "params": {**saved["params"], "conv": jnp.zeros((3, 3, 16))}}
    with pytest.raises(UserError, match=r"^the checkpoint at step 1 in .* does not fit this run's "
                                        r"state \(params/conv has shape \(3, 3, 8\) in the "
                                        r"checkpoint, \(3, 3, 16\) in this run\); resume with"):
      ckpt.restore(wider, 1)
    other = {**saved, "opt_state": (jnp.zeros(()),)}
    with pytest.raises(UserError, match=r"\(opt_state/0 is in this run, not in the checkpoint\)"):
      ckpt.restore(other, 1)
    restored = ckpt.restore(saved, 1)  # the state it was saved from still restores
    np.testing.assert_array_equal(restored["params"]["conv"], saved["params"]["conv"])
  finally:
    ckpt.close()


def test_batchnorm_model_trains_and_updates_its_statistics(tmp_path):
  # A regression guard: merging a model inside the grad trace must let BatchNorm write its
  # running statistics (flax refuses to mutate Variables created outside the trace).
  # test_zoo_training's resnet20 learning run, stopped after 2 steps.
  config = learning_run_config("resnet20", halt_after_steps=2, log_every_steps=1,
                               eval_every_steps=2, **{"checkpoint.every_steps": 2})
  final = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final["loss"])
  ckpt = os.path.join(str(tmp_path), "checkpoints", "2", "default")
  model_state = saved_tree(ckpt)["model_state"]
  flat = jax.tree_util.tree_flatten_with_path(model_state)[0]
  stem_means = [np.asarray(v) for k, v in flat
                if "stem" in jax.tree_util.keystr(k) and "mean" in jax.tree_util.keystr(k)]
  assert stem_means and np.abs(stem_means[0]).max() > 0  # moved from their zero init


def test_prefetch_to_device_reaches_the_loop_and_changes_no_result(tmp_path, monkeypatch):
  # The loop issues the next batches' host-to-device copies `data.prefetch_to_device` steps
  # ahead; what it trains on must not depend on how far ahead.
  from cnn_jax import data
  sizes = []
  original = data.prefetch_to_device

  def recording(batches, put, size=2):
    sizes.append(size)
    return original(batches, put, size)

  monkeypatch.setattr(data, "prefetch_to_device", recording)
  params = {}
  for ahead in (0, 3):
    config = load_config("lenet5_digits", halt_after_steps=6, log_every_steps=3,
                         eval_every_steps=6,
                         **{"data.prefetch_to_device": ahead, **SHARED_8_DEVICE_RUN})
    train.train_and_evaluate(config, str(tmp_path / f"ahead{ahead}"))
    params[ahead] = final_params(str(tmp_path / f"ahead{ahead}"))[1]
  assert sizes == [0, 3]
  for key, value in params[0].items():
    np.testing.assert_array_equal(value, params[3][key], err_msg=key)


def test_a_convnext_forward_does_not_write_out_constants_at_full_size():
  """On CPU a ConvNeXt's forward-only program compiles with YNNPACK on its dots alone
  (`hostenv.forward_compiler_options`): with the GELU fused into YNNPACK's dots, XLA wrote each
  of its constants out at the activation's size. Same logits, half ConvNeXt-T's temporaries."""
  from flax import nnx

  from cnn_jax import hostenv
  from helpers import numpy_random_model

  model = numpy_random_model("convnext_tiny", 0)
  model.eval()
  graphdef, state = nnx.split(model)
  x = np.random.default_rng(0).standard_normal((4, 128, 128, 3)).astype(np.float32)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  options = hostenv.forward_compiler_options(model)
  assert options == hostenv.INFERENCE_COMPILER_OPTIONS  # CPU, and no flag of the user's
  plain = jax.jit(forward).lower(state, x).compile()
  inference = jax.jit(forward, compiler_options=options).lower(state, x).compile()
  temporaries = [c.memory_analysis().temp_size_in_bytes for c in (plain, inference)]
  assert temporaries[1] < 0.6 * temporaries[0], temporaries
  np.testing.assert_allclose(inference(state, x), plain(state, x), rtol=1e-5, atol=1e-5)


def test_the_eval_step_of_a_convnext_without_grn_and_only_of_one_compiles_with_forward_options(
    monkeypatch):
  from cnn_jax import bench, hostenv

  # An option XLA refuses: the step that compiles with it fails, naming it.
  monkeypatch.setitem(hostenv.INFERENCE_COMPILER_OPTIONS, "xla_cpu_experimental_ynn_fusion_type",
                     "NO_SUCH_TYPE")
  sizes = dict(mode="infer", batch_size=2, image_size=32, num_devices=1, num_classes=10)
  small = {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}
  with pytest.raises(Exception, match="NO_SUCH_TYPE"):
    bench.prepare_jax("convnext_tiny", **sizes, model_kwargs=small)
  # A ConvNeXt with GRN (V2), and ViT, run their forward faster with XLA's defaults: they keep
  # them.
  bench.prepare_jax("convnextv2_atto", **sizes, model_kwargs=small)
  bench.prepare_jax("vit_tiny_patch4_32", **sizes, model_kwargs={"depth": 1})


def test_the_loops_step_on_the_states_leaves_is_the_train_step_on_the_state():
  # jit_train_step takes and returns the state's leaves (a TrainState flattens in Python at
  # every call); the leaves must come back in the state's order, each the step's own. With
  # data.crop_on_device it cuts the batch's images from the resident set itself: the same
  # state, bit for bit, as the step on the host's crops.
  import functools

  from cnn_jax import data, parallel
  config = load_config("lenet5_digits", **ONE_DEVICE, **{"data.max_shift": 2})
  task = train.CLASSIFICATION
  mesh = parallel.create_mesh(config)
  batches, _, info = data.create_datasets(config)
  _, schedule = train.run_schedule(config, batches.steps_per_epoch)
  model = task.build_model(config)
  graphdef, _, params, model_state = train.split_model(model)
  tx = train.build_optimizer(config, schedule, model, params)
  state = train.create_train_state(config, params, model_state, tx)
  shardings = parallel.state_sharding(state, mesh)
  on_leaves = train.jit_train_step(task, config, info, mesh, graphdef, tx, schedule, shardings)
  on_state = jax.jit(functools.partial(task.train_step, graphdef=graphdef, tx=tx,
                                       schedule=schedule, **task.step_options(config, info)))
  leaves = jax.tree.leaves(jax.tree.map(jnp.copy, state))
  config.data.crop_on_device = True
  crop_batches = data.create_datasets(config)[0]
  resident = jax.device_put(crop_batches.resident(), parallel.replicated(mesh))
  cropped = jax.tree.leaves(jax.tree.map(jnp.copy, state))
  for step in range(2):
    batch = parallel.shard_batch(batches.batch(step), mesh)
    crop_batch = parallel.shard_batch(crop_batches.batch(step), mesh)
    assert set(crop_batch) == {"crop_index", "crop_offset", "label"}
    leaves, leaf_metrics = on_leaves(leaves, batch, {})
    cropped, cropped_metrics = on_leaves(cropped, crop_batch, resident)
    state, state_metrics = on_state(state, batch)
    assert float(leaf_metrics["loss"]) == float(state_metrics["loss"])
    assert float(cropped_metrics["loss"]) == float(state_metrics["loss"])
  expected = jax.tree.leaves(state)
  assert len(leaves) == len(cropped) == len(expected)
  for got, got_cropped, want in zip(leaves, cropped, expected):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got_cropped), np.asarray(want))
  assert int(jax.tree.unflatten(jax.tree.structure(state), leaves).step) == 2
