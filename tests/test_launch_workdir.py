"""Runs that share a workdir: processes of one run preparing it at once, a second run refused
while the first holds the lock (a stale lock does not block), and a multi-process run whose one
failing process stops the others at once, naming it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from cnn_jax import train, workdir_lock
from cnn_jax.errors import UserError
from helpers import REPO_ROOT, free_port, load_config, run_cli


def test_many_processes_prepare_a_fresh_workdir_at_once(tmp_path):
  # The processes of one run start together on a workdir that does not exist yet.
  for attempt in range(20):  # a race: some attempts interleave, most do not
    workdir = str(tmp_path / f"fresh{attempt}" / "w")
    errors, start = [], threading.Barrier(8)

    def prepare():
      start.wait()
      try:
        train._prepare_workdir(workdir)
      except Exception as e:  # noqa: BLE001 - any failure is the bug
        errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert not errors, errors[0]
    assert os.listdir(workdir) == []  # no probe left behind


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lock.LOCK_NAME), "w") as f:
    json.dump({"host": socket.gethostname(), "started": "then", "slurm_job": None, **holder}, f)


def test_a_live_holder_refuses_a_second_run_naming_it(tmp_path):
  # Alive until the test kills it: a holder that ended on its own (it slept 120 s) freed the
  # lock while a loaded machine was still starting the CLI run below, which then trained.
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)"])
  try:
    _write_lock(tmp_path, pid=holder.pid)
    with pytest.raises(UserError, match=rf"in use by another run \(pid {holder.pid} on "
                                        rf"{socket.gethostname()}, since then\)"):
      workdir_lock.acquire(str(tmp_path))
    # Through the tool: one line, exit 2, nothing trained.
    result = run_cli("cnn_jax.main", "--config=configs/lenet5_digits.py",
                     f"--workdir={tmp_path}", "--config.total_steps=2")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: workdir '{tmp_path}' is in use by another run "
                                    f"(pid {holder.pid}")
    assert result.stderr.strip().count("\n") == 0
    assert not os.path.exists(tmp_path / "checkpoints")
  finally:
    holder.kill()
    holder.wait()


def test_stale_locks_are_taken_over(tmp_path, monkeypatch):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_lock(tmp_path / "dead", pid=dead.pid)  # this host, pid gone
  _write_lock(tmp_path / "old", host="another-node", pid=1)  # not refreshed for long
  old = tmp_path / "old" / workdir_lock.LOCK_NAME
  os.utime(old, (time.time() - 2 * workdir_lock.STALE_S,) * 2)
  _write_lock(tmp_path / "requeued", host="another-node", pid=1, slurm_job="77_3")
  _write_lock(tmp_path / "fresh", host="another-node", pid=1, slurm_job="77_4")
  monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
  monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
  for name in ("dead", "old", "requeued"):
    me = workdir_lock.acquire(str(tmp_path / name))
    assert json.load(open(tmp_path / name / workdir_lock.LOCK_NAME))["pid"] == me["pid"]
    workdir_lock.release(str(tmp_path / name), me)
    assert not os.path.exists(tmp_path / name / workdir_lock.LOCK_NAME)
  with pytest.raises(UserError, match="another-node, SLURM job 77_4"):
    workdir_lock.acquire(str(tmp_path / "fresh"))


def test_the_lock_is_held_during_training_and_released_after(tmp_path, monkeypatch):
  seen = []
  real = train._train_and_evaluate

  def spy(config, workdir, task, mesh):
    seen.append(json.load(open(os.path.join(workdir, workdir_lock.LOCK_NAME))))
    with pytest.raises(UserError, match="in use by another run"):  # a second run, meanwhile
      monkeypatch.setattr(workdir_lock, "_me", lambda: {"host": "elsewhere", "pid": 1,
                                                        "slurm_job": None, "started": "now"})
      try:
        workdir_lock.acquire(workdir)
      finally:
        monkeypatch.undo()
    return real(config, workdir, task, mesh)

  monkeypatch.setattr(train, "_train_and_evaluate", spy)
  config = load_config("lenet5_digits", total_steps=2, eval_every_steps=2,
                       **{"schedule.warmup_epochs": 0.0, "mesh.num_devices": 1,
                          "data.num_test": 300, "data.eval_batch_size": 304})
  train.train_and_evaluate(config, str(tmp_path))
  assert seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_NAME)


def test_a_run_refused_under_the_lock_leaves_no_workdir(tmp_path):
  """Weights that cannot be loaded stop a run after it took the lock and before it wrote
  anything: the workdir it created goes with the lock; one that existed before stays."""
  not_weights = tmp_path / "not_weights"
  not_weights.mkdir()
  config = load_config("lenet5_digits", init_from=str(not_weights),
                       **{"mesh.num_devices": 1})
  fresh = tmp_path / "runs" / "fresh"
  with pytest.raises(UserError, match="not a converted checkpoint"):
    train.train_and_evaluate(config, str(fresh))
  assert not fresh.exists() and (tmp_path / "runs").is_dir()
  existing = tmp_path / "existing"
  existing.mkdir()
  with pytest.raises(UserError, match="not a converted checkpoint"):
    train.train_and_evaluate(config, str(existing))
  assert existing.is_dir() and os.listdir(existing) == []


@pytest.mark.slow
def test_one_failing_process_stops_the_others_naming_it(tmp_path):
  # Measured before: the healthy process sat in its next collective until jax.distributed's
  # shutdown barrier gave up (5 minutes), then both aborted with a C++ stack.
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  args = ["--config=configs/lenet5_digits.py", "--config.total_steps=30",
          f"--workdir={tmp_path / 'w'}", f"--coordinator_address=localhost:{port}",
          "--num_processes=2"]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "cnn_jax.main", *args, f"--process_id={i}",
       *(["--config.init_from=/nonexistent"] if i == 1 else [])],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]  # far below the 5-minute barrier
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  healthy, failing = outs
  assert procs[1].returncode == 2, failing[1][-3000:]
  assert "\nerror: init_from='/nonexistent'" in "\n" + failing[1], failing[1][-3000:]
  assert procs[0].returncode == 1, healthy[1][-3000:]
  assert ("error: stopping process 0 of 2: process 1 of 2 on "
          f"{socket.gethostname()} failed: UserError: init_from='/nonexistent'") in healthy[1], \
      healthy[1][-3000:]
