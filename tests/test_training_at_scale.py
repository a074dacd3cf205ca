"""Training at scale: FSDP, multi-process, EMA, schedules, decay masks, layer decay,
no recompilation, preemption (SIGTERM), kill -9 resume, non-finite loss."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import checkpoint, optim, parallel, train
from helpers import (DIGITS, HANG_TIMEOUT, ONE_DEVICE, REPO_ROOT, SHARED_8_DEVICE_RUN, final_params,
                     free_port, load_config, losses, read_jsonl, run_cli)

# The runs that check stopping, resuming, EMA, bfloat16 and the best checkpoint, on one device
# as `make train` on a CPU: the 8 fake devices conftest sets cost each step several times its
# one-device time, and sharding is checked by the tests that need it.
ONE_DEVICE_FLAG = "--config.mesh.num_devices=1"
SHORT = dict(log_every_steps=1, **{"schedule.warmup_epochs": 0.2})


def test_fsdp_shards_parameters_and_matches_data_parallel(tmp_path):
  config = load_config("lenet5_digits", halt_after_steps=6, eval_every_steps=6,
                       log_every_steps=1, **SHARED_8_DEVICE_RUN)
  train.train_and_evaluate(config, str(tmp_path / "dp"))
  config.mesh.strategy = "fsdp"
  config.mesh.fsdp_min_size = 1000
  train.train_and_evaluate(config, str(tmp_path / "fsdp"))
  np.testing.assert_allclose(losses(tmp_path / "dp"), losses(tmp_path / "fsdp"), rtol=1e-5)
  # The rule itself: the largest divisible dimension is split, small arrays stay whole.
  assert parallel.fsdp_spec((400, 120), 8, 1000) == jax.sharding.PartitionSpec("data", None)
  assert parallel.fsdp_spec((5, 5, 6, 16), 8, 1000) == jax.sharding.PartitionSpec(
      None, None, None, "data")
  assert parallel.fsdp_spec((120,), 8, 1000) == jax.sharding.PartitionSpec()
  assert parallel.fsdp_spec((5, 5, 1, 6), 8, 100) == jax.sharding.PartitionSpec()
  assert parallel.fsdp_spec((84, 120), 8, 1000) == jax.sharding.PartitionSpec(None, "data")


def test_fsdp_state_is_really_sharded():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  params = {"w": jnp.zeros((400, 120)), "b": jnp.zeros((120,))}
  shardings = parallel.state_sharding(params, mesh, "fsdp", 1000)
  placed = jax.device_put(params, shardings)
  assert placed["w"].addressable_shards[0].data.shape == (50, 120)
  assert placed["b"].addressable_shards[0].data.shape == (120,)


def test_a_checkpoint_restores_into_an_abstract_sharded_state(tmp_path):
  # What a resume hands the checkpointer: shapes, dtypes and fsdp shardings, no arrays; the
  # RNG streams' typed keys among them.
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  rng = np.random.default_rng(0)
  state = {"w": jnp.asarray(rng.standard_normal((400, 120)), jnp.float32),
           "b": jnp.asarray(rng.standard_normal(120), jnp.float32),
           "dropout_key": jax.random.split(jax.random.key(3), 1)[0]}
  ckpt = checkpoint.Checkpointer(str(tmp_path), load_config("lenet5_digits"))
  ckpt.save(5, state, force=True)
  ckpt.wait()
  try:
    shardings = parallel.state_sharding(state, mesh, "fsdp", 1000)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    restored, step = ckpt.restore_latest(abstract)
  finally:
    ckpt.close()
  assert step == 5
  assert restored["w"].addressable_shards[0].data.shape == (50, 120)
  assert restored["dropout_key"].dtype == state["dropout_key"].dtype
  np.testing.assert_array_equal(jax.random.key_data(restored["dropout_key"]),
                                jax.random.key_data(state["dropout_key"]))
  for name in ("w", "b"):
    np.testing.assert_array_equal(restored[name], state[name])


def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
  # The two processes cut their shifted crops on the devices (data.crop_on_device: each places
  # the set on its devices and feeds its rows' indices); the one process gathers them on the
  # host: the same batches, so the same run.
  args = ["--config", DIGITS, "--config.total_steps=6", "--config.log_every_steps=1",
          "--config.eval_every_steps=6", "--config.schedule.warmup_epochs=0.1",
          "--config.data.max_shift=2", "--config.data.crop_on_device=True"]
  port = free_port()
  env2 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "cnn_jax.main", *args, "--workdir", str(tmp_path / "two"),
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO_ROOT, env=env2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  # The one process is this one, on 4 of its 8 devices: a third process would only add its
  # start-up, and the mesh is the same 4 devices' either way.
  train.train_and_evaluate(load_config("lenet5_digits", total_steps=6, log_every_steps=1,
                                       eval_every_steps=6, **{"schedule.warmup_epochs": 0.1,
                                                              "mesh.num_devices": 4,
                                                              "data.max_shift": 2}),
                           str(tmp_path / "one"))
  outs = [p.communicate(timeout=HANG_TIMEOUT) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert "on 4 cpu device(s)" in outs[0][0]
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
  assert len(losses(tmp_path / "one")) == 6


# Run by each of two processes (one CPU device each): a state with a typed PRNG key (a drop
# path's RNG stream) placed on a mesh over both, saved, and restored into an abstract target.
# device_put refuses typed keys for devices of other processes: every ConvNeXt and ViT run of
# several processes once stopped there.
TWO_PROCESS_STATE = """
import sys
import jax, jax.numpy as jnp, ml_collections, numpy as np
from cnn_jax import checkpoint, parallel
port, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parallel.initialize_distributed(f"localhost:{port}", 2, process_id)
mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
state = {"w": jnp.arange(64.0).reshape(8, 8), "key": jax.random.key(7)}
shardings = parallel.state_sharding(state, mesh, "fsdp", 16)
placed = parallel.put_state(state, shardings)
assert placed["w"].addressable_shards[0].data.shape == (4, 8)
config = ml_collections.ConfigDict(
    {"checkpoint": {"every_steps": 1, "keep": 1, "use_async": False, "best_metric": "",
                    "best_mode": "max"}})
ckpt = checkpoint.Checkpointer(workdir, config)
ckpt.save(1, placed, force=True)
ckpt.wait()
abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
restored, step = ckpt.restore_latest(abstract)
ckpt.close()
assert step == 1
for tree in (placed, restored):
  np.testing.assert_array_equal(tree["w"].addressable_shards[0].data,
                                np.arange(64.0).reshape(8, 8)[4 * process_id:][:4])
  np.testing.assert_array_equal(jax.random.key_data(tree["key"]).addressable_data(0),
                                jax.random.key_data(jax.random.key(7)))
print("ok", flush=True)
"""


def test_a_state_with_rng_keys_is_placed_and_restored_across_two_processes(tmp_path):
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  procs = [subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS_STATE, str(port), str(i), str(tmp_path)],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=HANG_TIMEOUT) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
  assert [out.splitlines()[-1] for out, _ in outs] == ["ok", "ok"]


def test_no_recompilation_after_the_first_step(tmp_path, caplog):
  config = load_config("lenet5_digits", halt_after_steps=8, eval_every_steps=4,
                       log_every_steps=1, **SHARED_8_DEVICE_RUN)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    train.train_and_evaluate(config, str(tmp_path))
  compiled = [r.getMessage() for r in caplog.records if "Finished XLA compilation" in
              r.getMessage() or "Compiling" in r.getMessage()]
  train_compiles = [m for m in compiled if "train_step" in m and "Compiling" in m]
  eval_compiles = [m for m in compiled if "eval_step" in m and "Compiling" in m]
  assert len(train_compiles) == 1, train_compiles
  assert len(eval_compiles) == 1, eval_compiles


def test_ema_follows_the_parameters(tmp_path):
  config = load_config("lenet5_digits", total_steps=10, eval_every_steps=10, ema_decay=0.5,
                       **SHORT, **ONE_DEVICE)
  final = train.train_and_evaluate(config, str(tmp_path))
  assert {"accuracy", "ema_accuracy", "loss", "ema_loss"} <= set(final)
  # One step by hand: ema = d * ema + (1 - d) * new params.
  params = {"w": jnp.ones((2,))}
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                           opt_state=(), ema_params={"w": jnp.zeros((2,))})
  new = optax.incremental_update(state.params, state.ema_params, step_size=1 - 0.9)
  np.testing.assert_allclose(new["w"], [0.1, 0.1], rtol=1e-6)


def test_step_schedule_and_lr_scaling():
  config = load_config("lenet5_digits", **{
      "schedule.name": "step", "schedule.warmup_epochs": 0, "schedule.decay_steps": (32, 48),
      "optimizer.learning_rate": 0.1, "optimizer.scale_lr_by_batch_over": 128,
      "data.batch_size": 64})
  schedule = optim.create_schedule(config, total_steps=64, steps_per_epoch=10)
  assert schedule(0) == pytest.approx(0.05)  # 0.1 * 64 / 128
  assert schedule(31) == pytest.approx(0.05)
  assert schedule(32) == pytest.approx(0.005)
  assert schedule(48) == pytest.approx(0.0005)


def test_weight_decay_mask_spares_biases_norms_and_embeddings():
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones((8,))},
            "norm": {"scale": jnp.ones((8,))}, "pos_embed": jnp.ones((1, 5, 8)),
            "cls_token": jnp.ones((1, 1, 8)), "grn": {"gamma": jnp.ones((8,))}}
  mask = optim.weight_decay_mask("kernels")(params)
  assert mask == {"conv": {"kernel": True, "bias": False}, "norm": {"scale": False},
                  "pos_embed": False, "cls_token": False, "grn": {"gamma": False}}


def test_layer_decay_scales_updates_per_layer():
  params = {"stem": jnp.ones(()), "blocks": {"0": jnp.ones(()), "1": jnp.ones(())},
            "head": jnp.ones(())}

  def layer_id(path):
    if path[0] == "blocks":
      return int(path[1]) + 1
    return {"stem": 0, "head": 3}[path[0]]

  config = load_config("lenet5_digits", **{
      "optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.layer_decay": 0.5})
  tx = optim.create_optimizer(config, optax.constant_schedule(1.0), params=params,
                              layer_id=layer_id, num_layers=2)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates["head"]) == -1.0
  assert float(updates["blocks"]["1"]) == -0.5
  assert float(updates["blocks"]["0"]) == -0.25
  assert float(updates["stem"]) == -0.125


def test_gradient_accumulation_updates_every_k_steps():
  config = load_config("lenet5_digits", **{"optimizer.grad_accum_steps": 2,
                                           "optimizer.name": "sgd"})
  tx = optim.create_optimizer(config, optax.constant_schedule(1.0))
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  u1, state = tx.update({"w": jnp.ones(())}, state, params)
  u2, state = tx.update({"w": 3 * jnp.ones(())}, state, params)
  assert float(u1["w"]) == 0.0 and float(u2["w"]) == pytest.approx(-2.0)


def _wait_for_step(proc, min_step, timeout=HANG_TIMEOUT):
  """Reads the progress lines until one reports step >= min_step. Fails as soon as the run
  ends without reaching it; a run that hangs is killed after `timeout` (its output then ends).
  (It waited 120 s by the clock before, which a loaded machine's start-up and compile
  could overrun.)"""
  watchdog = threading.Timer(timeout, proc.kill)
  watchdog.start()
  try:
    for line in proc.stdout:
      if line.startswith("[") and int(line[1:].split("/")[0]) >= min_step:
        return
  finally:
    watchdog.cancel()
  with open(proc.args[proc.args.index("--workdir") + 1] + ".stderr") as err:
    raise AssertionError(f"training ended (exit {proc.wait()}) before step {min_step}:\n"
                         + err.read()[-3000:])


# The overrides of every _spawn'ed run; a run of the same config in this process takes them too.
SPAWNED = {"log_every_steps": 1, "checkpoint.every_steps": 5, "mesh.num_devices": 1}


def _spawn(workdir, **overrides):
  flags = [f"--config.{key}={value}" for key, value in {**SPAWNED, **overrides}.items()]
  # stderr to a file: a pipe nobody reads can fill and block the run.
  with open(workdir + ".stderr", "w") as err:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "cnn_jax.main", "--config", DIGITS, "--workdir", workdir,
         *flags],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, text=True)


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, capsys):
  workdir = str(tmp_path)
  proc = _spawn(workdir, num_epochs=50)
  _wait_for_step(proc, 3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=HANG_TIMEOUT)
  assert proc.returncode == 0, open(workdir + ".stderr").read()[-3000:]
  assert "received SIGTERM: checkpoint saved at step" in out
  saved = int(out.split("checkpoint saved at step ")[1].split(";")[0])
  assert final_params(workdir)[0] == saved
  # The rerun in this process (a second process would only add its start-up), with the
  # command's config.
  capsys.readouterr()
  train.train_and_evaluate(load_config("lenet5_digits", num_epochs=50, halt_after_steps=2,
                                       **SPAWNED), workdir)
  assert f"resumed from {workdir} at step {saved}" in capsys.readouterr().out


def test_kill_9_then_rerun_matches_an_uninterrupted_run_bit_for_bit(tmp_path):
  extra = {"total_steps": 40, "schedule.warmup_epochs": 0.2}
  # On a loaded machine this process can be scheduled so late that the run has done all its
  # steps before the kill: then nothing was interrupted, and a fresh run is killed instead.
  for attempt in range(3):
    killed = str(tmp_path / f"killed{attempt}")
    proc = _spawn(killed, **extra)
    _wait_for_step(proc, int(np.random.default_rng().integers(12, 30)))
    proc.kill()
    proc.communicate(timeout=HANG_TIMEOUT)
    if proc.returncode == -signal.SIGKILL:
      break
  assert proc.returncode == -signal.SIGKILL, "every run ended before its kill"
  assert 5 <= final_params(killed)[0] < 40
  assert _spawn(killed, **extra).wait(timeout=HANG_TIMEOUT) == 0
  # The uninterrupted run in this process, with the command's config: the same compiled step
  # (from the session's compilation cache) without a third process's start-up.
  train.train_and_evaluate(load_config("lenet5_digits", **SPAWNED, **extra),
                           str(tmp_path / "full"))
  step_a, params_a = final_params(killed)
  step_b, params_b = final_params(str(tmp_path / "full"))
  assert step_a == step_b == 40
  for key in params_b:
    np.testing.assert_array_equal(params_a[key], params_b[key], err_msg=key)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path):
  result = run_cli("cnn_jax.main", "--config", DIGITS, "--workdir", str(tmp_path),
                   "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=1e6",
                   "--config.schedule.name=constant", "--config.checkpoint.every_steps=1",
                   "--config.total_steps=40", ONE_DEVICE_FLAG)
  assert result.returncode == 1
  # Orbax warns, in its own log format, when a save waited on the one before it for over a
  # second: with a save every step that depends on the machine's speed, so it is not counted.
  lines = [line for line in result.stderr.strip().splitlines()
           if not re.match(r"W\d{4} .*checkpoint_manager\.py.*Waiting for previous save", line)]
  assert len(lines) == 1 and "non-finite training loss at step" in lines[0], result.stderr
  if os.path.exists(tmp_path / "checkpoints"):
    _, params = final_params(str(tmp_path))
    assert all(np.isfinite(v).all() for v in params.values())


def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
  config = load_config("lenet5_digits", total_steps=20, eval_every_steps=20, **SHORT,
                       **ONE_DEVICE)
  config.model.dtype = "bfloat16"
  final = train.train_and_evaluate(config, str(tmp_path))
  _, params = final_params(str(tmp_path))
  assert all(v.dtype == np.float32 for v in params.values())
  log = losses(tmp_path)
  assert log[-1] < 0.8 * log[0] and final["accuracy"] > 0.3


def test_best_checkpoint_is_the_best_eval_kept_past_the_rotation_and_survives_a_resume(tmp_path):
  # Evals every 3 steps, regular saves every 6 keeping 2: the best eval's step is saved (once,
  # with the regular ones) and kept however old; the halted run's rerun knows the value to beat.
  config = load_config("lenet5_digits", total_steps=18, eval_every_steps=3, halt_after_steps=9,
                       **{"checkpoint.every_steps": 6, "checkpoint.keep": 2,
                          "optimizer.learning_rate": 0.02}, **SHORT, **ONE_DEVICE)
  train.train_and_evaluate(config, str(tmp_path))  # Halts at step 9; the rerun resumes.
  config.halt_after_steps = 0
  train.train_and_evaluate(config, str(tmp_path))
  evals = [(r["step"], r["eval/accuracy"]) for r in read_jsonl(tmp_path / "metrics.jsonl")
           if "eval/accuracy" in r]
  assert [s for s, _ in evals] == [3, 6, 9, 12, 15, 18]
  best_step, best_accuracy = max(evals, key=lambda e: (e[1], -e[0]))  # First of the best.
  new_bests = [s for i, (s, a) in enumerate(evals) if all(a > b for _, b in evals[:i])]
  saved = sorted({6, 9, 12, 18, *new_bests})  # Regular, the halt, and each new best.
  kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert kept == sorted({*saved[-2:], best_step})
  assert not os.path.exists(tmp_path / "checkpoints_best")
  # What a resumed run reads back as the value to beat, and what `predict` loads.
  reopened = checkpoint.Checkpointer(str(tmp_path), config)
  assert (reopened.best_step, reopened.best_value) == (best_step, pytest.approx(best_accuracy))
  reopened.close()
  assert checkpoint.read_run_weights(str(tmp_path), best=("accuracy", "max"))[0] == best_step
  assert checkpoint.read_run_weights(str(tmp_path))[0] == 18
  # A run saved before the best checkpoint joined the others kept it apart: of the two, the
  # better recorded value is read, and is the value a resumed run must beat.
  other = next(s for s in kept if s != best_step)
  legacy = tmp_path / "checkpoints_best" / str(other)
  shutil.copytree(tmp_path / "checkpoints" / str(other), legacy)
  for value, read_step in ((best_accuracy / 2, best_step), (best_accuracy + 1, other)):
    (legacy / "metrics" / "metrics").write_text(json.dumps({"accuracy": value}))
    assert checkpoint.read_run_weights(str(tmp_path), best=("accuracy", "max"))[0] == read_step
  reopened = checkpoint.Checkpointer(str(tmp_path), config)
  assert (reopened.best_step, reopened.best_value) == (other, pytest.approx(best_accuracy + 1))
  reopened.close()


def test_unknown_best_metric_fails_before_training(tmp_path):
  result = run_cli("cnn_jax.main", "--config", DIGITS, "--workdir", str(tmp_path),
                   "--config.checkpoint.best_metric=top1")
  assert result.returncode == 2
  assert result.stderr.strip() == (
      "error: checkpoint.best_metric 'top1' is not an eval metric of this run; choose from "
      "loss, accuracy, top5_accuracy or '' (off)")
  assert not os.path.exists(tmp_path / "checkpoints")
