"""Against a real one-node SLURM (tests/slurm/start.sh; `make test-slurm`): a sweep as a job
array, a 2-task jax.distributed training, and a preempted point that is requeued and ends
bit-identical to an uninterrupted run.

Marked `slurm`: the fast suite leaves them out, and they skip where no SLURM answers. The
machine may be loaded: generous timeouts, no timing assertions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from tests.helpers import final_params, losses, run_cli, write_sweep_file


def _slurm_up() -> bool:
  if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
    return False
  result = subprocess.run(["sinfo", "--noheader", "-o", "%T"], capture_output=True, text=True)
  return result.returncode == 0 and any(
      s in result.stdout for s in ("idle", "mixed", "allocated"))


pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def _needs_slurm():
  # Asked only when a test is selected: the fast suite does not wait on sinfo.
  if not _slurm_up():
    pytest.skip("no SLURM answers (start one with tests/slurm/start.sh)")

WAIT_S = 1500  # the whole job, on a loaded machine
# Jobs inherit the submitting environment: one CPU device per process, not the fast suite's 8.
ONE_DEVICE = "--slurm.setup=export XLA_FLAGS=--xla_force_host_platform_device_count=1"
TINY = ["--config.log_every_steps=1", "--config.schedule.warmup_epochs=0",
        "--config.data.num_test=300", "--config.data.eval_batch_size=300",
        "--config.checkpoint.every_steps=1000"]


def _sweep_file(tmp_path, steps: int, grid: list) -> str:
  return write_sweep_file(
      tmp_path, workdir=str(tmp_path / "sweep"), points=[], grid=grid,
      overrides=[("total_steps", steps), ("log_every_steps", 1), ("eval_every_steps", steps),
                 ("schedule.warmup_epochs", 0.0), ("data.batch_size", 32),
                 ("data.num_test", 300), ("data.eval_batch_size", 300),
                 ("mesh.num_devices", 1), ("checkpoint.every_steps", 1000)])


def _job_id(stdout: str) -> str:
  match = re.search(r"submitted job (\d+)", stdout)
  assert match, stdout
  return match.group(1)


def _in_queue(job_id: str) -> bool:
  out = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={job_id}", "-o", "%T"],
                       capture_output=True, text=True).stdout
  return bool(out.strip())


def _wait_gone(job_id: str, what: str, timeout: float = WAIT_S) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if not _in_queue(job_id):
      return
    time.sleep(3)
  subprocess.run(["scancel", job_id])
  raise AssertionError(f"{what}: job {job_id} still queued after {timeout} s")


def _logs(folder) -> str:
  return "\n".join(open(os.path.join(folder, f)).read() for f in sorted(os.listdir(folder))
                   if f.endswith("_log.out"))


def test_sweep_runs_as_a_job_array_and_collects(tmp_path):
  path = _sweep_file(tmp_path, 6, [("optimizer.learning_rate", (0.001, 0.003, 0.01))])
  sweep_dir = tmp_path / "sweep"
  result = run_cli("cnn_jax.sweep", f"--config={path}", "--launcher=slurm",
                   "--slurm.time=30", "--slurm.max_parallel=3", ONE_DEVICE)
  assert result.returncode == 0, result.stderr
  job = _job_id(result.stdout)
  assert "3 point(s)" in result.stdout

  # Launched again while it runs: refused, nothing submitted.
  again = run_cli("cnn_jax.sweep", f"--config={path}", "--launcher=slurm", ONE_DEVICE)
  if _in_queue(job):
    assert again.returncode == 2 and "already running" in again.stderr, again.stderr
    assert again.stderr.strip().count("\n") == 0

  _wait_gone(job, "sweep")
  status = run_cli("cnn_jax.sweep", f"--config={path}", "--status")
  assert status.returncode == 0, status.stderr
  assert "3 done" in status.stdout, (status.stdout, _logs(sweep_dir / "slurm"))
  collected = run_cli("cnn_jax.sweep", f"--config={path}", "--collect_only")
  assert collected.returncode == 0, collected.stderr
  table = open(sweep_dir / "results.md").read()
  assert table.count("| finished |") == 3
  submissions = json.load(open(sweep_dir / "submissions.json"))["submissions"]
  assert len(submissions) == 1 and os.path.exists(submissions[0]["sbatch_script"])

  # Everything done: a rerun submits nothing.
  rerun = run_cli("cnn_jax.sweep", f"--config={path}", "--launcher=slurm", ONE_DEVICE)
  assert rerun.returncode == 0 and "nothing submitted" in rerun.stdout


def test_two_task_training_matches_one_process_with_the_same_global_batch(tmp_path):
  args = ["--config=configs/lenet5_digits.py", "--config.total_steps=8",
          "--config.eval_every_steps=8", "--config.data.batch_size=32", *TINY]
  result = run_cli("cnn_jax.launch", *args, f"--workdir={tmp_path / 'two'}",
                   "--tasks_per_node=2", "--slurm.time=30", ONE_DEVICE)
  assert result.returncode == 0, result.stderr
  job = _job_id(result.stdout)
  one = run_cli("cnn_jax.main", *args, f"--workdir={tmp_path / 'one'}",
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, timeout=900)
  assert one.returncode == 0, one.stderr
  _wait_gone(job, "2-task run")
  log = _logs(tmp_path / "two" / "slurm")
  assert "on 2 cpu device(s)" in log, log  # two processes of one device each
  assert (tmp_path / "two" / "final_metrics.json").exists(), log
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
  assert len(losses(tmp_path / "one")) == 8


def test_a_preempted_point_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path):
  total = 600  # the signal must land mid-run: a step takes milliseconds once compiled
  path = _sweep_file(tmp_path, total, [("seed", (3,))])
  sweep_dir = tmp_path / "sweep"
  result = run_cli("cnn_jax.sweep", f"--config={path}", "--launcher=slurm",
                   "--slurm.time=30", ONE_DEVICE)
  assert result.returncode == 0, result.stderr
  job = _job_id(result.stdout)
  point = sweep_dir / "seed-3"

  deadline = time.time() + WAIT_S
  while time.time() < deadline:  # a few steps in, then SLURM's preemption signal
    steps = [json.loads(line)["step"] for line in open(point / "metrics.jsonl")] \
        if (point / "metrics.jsonl").exists() else []
    if steps and max(steps) >= 3:
      break
    time.sleep(1)
  else:
    subprocess.run(["scancel", job])
    raise AssertionError("the point did not start in time")
  subprocess.run(["scancel", "--signal=TERM", job], check=True)
  _wait_gone(job, "requeued point")

  log = _logs(sweep_dir / "slurm")
  saved = re.findall(r"received SIGTERM: checkpoint saved at step (\d+);", log)
  assert len(saved) == 1, log
  step = int(saved[0])
  assert step < total
  assert "requeued job" in log and f"resumed from {point} at step {step}" in log, log
  assert json.load(open(point / "final_metrics.json"))["step"] == total

  full = tmp_path / "full"
  config_args = json.load(open(point / "submission.json"))["config"]
  assert config_args["seed"] == 3
  ref = run_cli("cnn_jax.main", "--config=configs/lenet5_digits.py", f"--workdir={full}",
                f"--config.total_steps={total}", f"--config.eval_every_steps={total}",
                "--config.data.batch_size=32", "--config.mesh.num_devices=1",
                "--config.seed=3", *TINY,
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}, timeout=900)
  assert ref.returncode == 0, ref.stderr
  step_a, params_a = final_params(point)
  step_b, params_b = final_params(full)
  assert step_a == step_b == total
  for key in params_b:
    np.testing.assert_array_equal(params_a[key], params_b[key], err_msg=key)
  assert losses(point) == losses(full)
