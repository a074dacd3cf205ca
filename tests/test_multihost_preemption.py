"""Preemption across processes: SIGTERM reaches one of two processes (2 fake CPU devices
each); both must save the same step and exit 0, and the rerun ends where an uninterrupted
two-process run ends, bit for bit."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import DIGITS, HANG_TIMEOUT, REPO_ROOT, final_params, free_port, losses

TOTAL = 60  # Room for the notice to spread: the notifier polls its flag once a second.
ARGS = ["--config", DIGITS, f"--config.total_steps={TOTAL}", "--config.log_every_steps=1",
        f"--config.eval_every_steps={TOTAL}", "--config.schedule.warmup_epochs=0.2",
        "--config.checkpoint.every_steps=1000"]


def _launch(workdir, logs, name):
  """Two processes of one run; stdout/stderr go to LOGS/NAME_I.out/.err, so no pipe can fill
  and block."""
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = []
  for i in range(2):
    out, err = logs / f"{name}_{i}.out", logs / f"{name}_{i}.err"
    with open(out, "w") as out_file, open(err, "w") as err_file:
      procs.append((subprocess.Popen(
          [sys.executable, "-u", "-m", "cnn_jax.main", *ARGS, "--workdir", str(workdir),
           f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--process_id={i}"],
          cwd=REPO_ROOT, env=env, stdout=out_file, stderr=err_file), out, err))
  return procs


def _finish(procs, timeout=HANG_TIMEOUT):
  """Waits for both (killing both on a hang) and returns their stdout texts."""
  try:
    for p, _, _ in procs:
      p.wait(timeout=timeout)
  finally:
    for p, _, _ in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outs = [open(out).read() for _, out, _ in procs]
  for (p, _, err), out in zip(procs, outs):
    assert p.returncode == 0, f"{out}\n{open(err).read()[-3000:]}"
  return outs


def _wait_for_step(stdout_path, min_step, procs, timeout=HANG_TIMEOUT):
  """Polls the progress lines until one reports step >= min_step; fails as soon as a process
  has ended, and after `timeout` (a hang; a loaded machine's start-up can take minutes)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    with open(stdout_path) as f:
      steps = [int(m) for m in re.findall(r"^\[\s*(\d+)/", f.read(), re.M)]
    if steps and max(steps) >= min_step:
      return
    if any(p.poll() is not None for p, _, _ in procs):
      _finish(procs)  # reports the process that ended, with its output
      raise AssertionError("a process ended before the step was reached")
    time.sleep(0.2)
  raise AssertionError("training did not reach the step in time")


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_both_and_resumes(tmp_path):
  interrupted, full = tmp_path / "interrupted", tmp_path / "full"
  procs = _launch(interrupted, tmp_path, "interrupted")
  _wait_for_step(procs[0][1], 3, procs)  # Process 0 prints the progress lines.
  procs[1][0].send_signal(signal.SIGTERM)  # Only process 1 is told.
  outs = _finish(procs)
  saved = [re.findall(r"checkpoint saved at step (\d+);", out) for out in outs]
  assert saved[0] == saved[1] and len(saved[0]) == 1, outs
  step = int(saved[0][0])
  assert 3 <= step < TOTAL
  assert "SIGTERM or SIGINT on one of the 2 processes: checkpoint saved" in outs[0]
  assert final_params(interrupted)[0] == step
  assert not (interrupted / "final_metrics.json").exists()

  rerun = _finish(_launch(interrupted, tmp_path, "rerun"))
  assert f"resumed from {interrupted} at step {step}" in rerun[0]
  _finish(_launch(full, tmp_path, "full"))
  step_a, params_a = final_params(interrupted)
  step_b, params_b = final_params(full)
  assert step_a == step_b == TOTAL
  for key in params_b:
    np.testing.assert_array_equal(params_a[key], params_b[key], err_msg=key)
  assert losses(interrupted) == losses(full)
  assert len(losses(full)) == TOTAL
