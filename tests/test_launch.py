"""cnn_jax.launch and the sweep's launchers without a cluster: the sbatch script and submitit
parameters generated for a job array or a multi-node run, re-runs that submit only what is not
done, duplicate submissions, --status, and the bad input that needs no SLURM.

SLURM's commands are stand-ins here (tests/slurm/ runs the real thing): `sbatch` keeps the
script it is given and answers with a job id, `squeue` prints what the test wrote for it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat

import pytest

from cnn_jax import hostenv, launch, sweep
from cnn_jax.errors import UserError
from helpers import REPO_ROOT, TINY_SWEEP_OVERRIDES, make_sweep, run_cli, write_sweep_file

_SBATCH = """#!/bin/sh
# Keeps the script, answers as sbatch does (or refuses, as told).
if [ -n "$FAKE_SBATCH_ERROR" ]; then echo "sbatch: error: $FAKE_SBATCH_ERROR" >&2; exit 1; fi
n=$(ls "$FAKE_SLURM"/sbatch_*.sh 2>/dev/null | wc -l)
cp "$1" "$FAKE_SLURM/sbatch_$n.sh"
echo "Submitted batch job $((42 + n))"
"""
_SQUEUE = """#!/bin/sh
cat "$FAKE_SLURM/squeue.txt" 2>/dev/null
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
  """A bin/ with sbatch, srun and squeue stand-ins first on the PATH; returns its folder."""
  folder = tmp_path / "fake_slurm"
  (folder / "bin").mkdir(parents=True)
  for name, text in (("sbatch", _SBATCH), ("squeue", _SQUEUE), ("srun", "#!/bin/sh\nexit 1\n")):
    path = folder / "bin" / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{folder / 'bin'}:{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_SLURM", str(folder))
  return folder


def _scripts(folder) -> list[str]:
  return [open(folder / f"sbatch_{i}.sh").read()
          for i in range(len(list(folder.glob("sbatch_*.sh"))))]


def _slurm(**fields):
  config = launch.slurm_config()
  for key, value in fields.items():
    config[key] = value
  return config


def _job_tunables_line(users: str) -> str:
  kept = hostenv.without_malloc_tunables(users)
  return f"export GLIBC_TUNABLES={kept}" if kept else "unset GLIBC_TUNABLES"


def _three_points():
  return make_sweep(grid=[("optimizer.learning_rate", (0.001, 0.003, 0.01))])


def test_sweep_on_slurm_is_one_job_array_with_the_asked_parameters(tmp_path, fake_slurm,
                                                                  monkeypatch):
  workdir = tmp_path / "sweep"
  # The sweep's own process under cnn_jax's malloc settings and one of the user's.
  monkeypatch.setenv("GLIBC_TUNABLES",
                     ":".join(["glibc.malloc.arena_max=2", *hostenv.MALLOC_TUNABLES]))
  sweep.run_sweep(_three_points(), str(workdir), launcher="slurm",
                  slurm=_slurm(partition="gpu", time="1:30:00", gpus_per_node=8,
                               max_parallel=2, cpus_per_task=10, setup="module load cuda"))
  (script,) = _scripts(fake_slurm)
  lines = script.splitlines()
  for expected in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                   "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                   "#SBATCH --nodes=1", "#SBATCH --cpus-per-task=10",
                   "#SBATCH --signal=USR2@90", "#SBATCH --job-name=cnn_jax:test", "module load cuda",
                   f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
                   # GPU jobs start without cnn_jax's malloc settings (hostenv), the user's kept.
                   "export GLIBC_TUNABLES=glibc.malloc.arena_max=2"):
    assert any(line.startswith(expected) for line in lines), (expected, script)
  assert lines.index("export GLIBC_TUNABLES=glibc.malloc.arena_max=2") < lines.index(
      next(line for line in lines if line.startswith("srun ")))
  assert f"#SBATCH --output={workdir}/slurm/%A_%a_0_log.out" in lines
  srun = next(line for line in lines if line.startswith("srun "))
  assert srun.endswith(f"-u -m submitit.core._submit {workdir}/slurm")

  record = json.load(open(workdir / "submissions.json"))["submissions"]
  assert len(record) == 1 and record[0]["job_id"] == "42" and record[0]["launcher"] == "slurm"
  names = [p.name for p in sweep.build_points(_three_points())]
  assert record[0]["points"] == {name: f"42_{i}" for i, name in enumerate(names)}
  assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", record[0]["git_commit"])
  assert record[0]["parameters"]["array_parallelism"] == 2

  # Each point's workdir records its job, and the job's pickle trains exactly that point.
  point_record = json.load(open(workdir / names[2] / "submission.json"))
  assert point_record["job_id"] == "42_2"
  assert point_record["config"]["optimizer"]["learning_rate"] == 0.01
  assert point_record["config"]["total_steps"] == 4
  with open(workdir / "slurm" / "42_2_submitted.pkl", "rb") as f:
    job = pickle.load(f).function
  assert isinstance(job, sweep.PointJob) and job.workdir == str(workdir / names[2])
  assert job.config.optimizer.learning_rate == 0.01
  assert job.checkpoint().function is job  # submitit requeues the same point, which resumes


def test_rerun_submits_only_points_not_done_and_refuses_while_running(tmp_path, fake_slurm):
  workdir = tmp_path / "sweep"
  names = [p.name for p in sweep.build_points(_three_points())]
  sweep.run_sweep(_three_points(), str(workdir), launcher="slurm", slurm=_slurm())

  # Point 1 still running: a second submission would train points twice.
  (fake_slurm / "squeue.txt").write_text("42_1 RUNNING\n")
  with pytest.raises(UserError, match=r"already running \(job 42_1 .*nothing submitted"):
    sweep.run_sweep(_three_points(), str(workdir), launcher="slurm", slurm=_slurm())
  (fake_slurm / "squeue.txt").write_text("42_[1-2%256] PENDING\n")  # a pending array's form
  with pytest.raises(UserError, match="already running"):
    sweep.run_sweep(_three_points(), str(workdir), launcher="slurm", slurm=_slurm())
  assert len(_scripts(fake_slurm)) == 1

  # The jobs ended; point 0 finished, the others did not: only those two go again.
  (fake_slurm / "squeue.txt").write_text("")
  (workdir / names[0] / "final_metrics.json").write_text('{"step": 4, "accuracy": 0.5}')
  sweep.run_sweep(_three_points(), str(workdir), launcher="slurm", slurm=_slurm())
  second = _scripts(fake_slurm)[1]
  assert "GLIBC_TUNABLES" not in second  # A CPU job inherits the sweep's malloc settings.
  assert "#SBATCH --array=0-1%2" in second.splitlines()
  submissions = json.load(open(workdir / "submissions.json"))["submissions"]
  assert submissions[1]["points"] == {names[1]: "43_0", names[2]: "43_1"}

  # Everything done: nothing to submit.
  for name in names[1:]:
    (workdir / name / "final_metrics.json").write_text('{"step": 4, "accuracy": 0.5}')
  sweep.run_sweep(_three_points(), str(workdir), launcher="slurm", slurm=_slurm())
  assert len(_scripts(fake_slurm)) == 2


def test_status_table_reads_the_queue_and_the_workdirs(tmp_path, fake_slurm):
  workdir = tmp_path / "sweep"
  config = make_sweep(grid=[("optimizer.learning_rate", (0.001, 0.003, 0.01, 0.03))])
  points = sweep.build_points(config)
  names = [p.name for p in points]
  sweep.run_sweep(config, str(workdir), launcher="slurm", slurm=_slurm())
  (workdir / names[0] / "final_metrics.json").write_text('{"step": 4}')
  with open(workdir / names[1] / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 2, "train/loss": 1.25}) + "\n")
  (fake_slurm / "squeue.txt").write_text("42_1 RUNNING\n42_[2] PENDING\n")
  rows = {r["point"]: r for r in sweep.status_rows(points, str(workdir))}
  assert [rows[n]["state"] for n in names] == ["done", "running", "pending", "failed"]
  assert rows[names[1]]["step"] == 2 and rows[names[1]]["metric"] == "train/loss=1.2500"
  assert rows[names[1]]["job"] == "42_1"
  assert sweep.status_rows(points, str(tmp_path / "other"))[0]["state"] == "not run"


def test_sbatch_refusal_is_passed_on_in_one_line(tmp_path, fake_slurm, monkeypatch):
  monkeypatch.setenv("FAKE_SBATCH_ERROR", "invalid partition specified: nope")
  with pytest.raises(UserError) as error:
    sweep.run_sweep(_three_points(), str(tmp_path / "sweep"), launcher="slurm",
                    slurm=_slurm(partition="nope"))
  assert str(error.value) == "sbatch refused the job: invalid partition specified: nope"
  assert not (tmp_path / "sweep" / "submissions.json").exists()


def _write_sweep_file(tmp_path) -> str:
  return write_sweep_file(tmp_path, workdir=str(tmp_path / "w"), overrides=TINY_SWEEP_OVERRIDES, points=[],
                          grid=[("optimizer.learning_rate", (0.001, 0.01))])


def test_no_sbatch_on_the_path_is_one_line_and_nothing_is_written(tmp_path):
  path = _write_sweep_file(tmp_path)
  bare_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                              if not os.path.exists(os.path.join(p, "sbatch")))
  result = run_cli("cnn_jax.sweep", f"--config={path}", "--launcher=slurm",
                   "--slurm.partition=gpu", env={"PATH": bare_path})
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith("error: --launcher slurm needs SLURM's sbatch")
  assert result.stderr.strip().count("\n") == 0
  assert not (tmp_path / "w").exists()


def test_launch_generates_one_multi_node_job_and_records_it(tmp_path, fake_slurm):
  workdir = tmp_path / "run"
  result = run_cli("cnn_jax.launch", "--config=configs/lenet5_digits.py",
                   "--config.data.batch_size=128", "--config.model.pool=avg",
                   f"--workdir={workdir}", "--nodes=2",
                   "--gpus_per_node=8", "--slurm.partition=gpu", "--slurm.time=2-00:00:00")
  assert result.returncode == 0, result.stderr
  assert "submitted job 42: 2 node(s) x 8 process(es)" in result.stdout
  (script,) = _scripts(fake_slurm)
  lines = script.splitlines()
  for expected in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8",
                   "#SBATCH --gpus-per-node=8", "#SBATCH --time=2880",
                   "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@90",
                   # launch ran under cnn_jax's malloc settings; its GPU job starts without them.
                   _job_tunables_line(os.environ.get("GLIBC_TUNABLES", ""))):
    assert expected in lines, (expected, script)
  assert not any(line.startswith("#SBATCH --array") for line in lines)
  record = json.load(open(workdir / "submission.json"))
  assert record["job_id"] == "42" and record["config"]["data"]["batch_size"] == 128
  assert record["slurm"]["nodes"] == 2 and "--nodes=2" in record["command"]
  # A model option that the config does not list reaches the job and the record's command.
  assert record["config"]["model"]["pool"] == "avg"
  assert "--config.model.pool=avg" in record["command"]
  assert open(record["sbatch_script"]).read() == script
  with open(workdir / "slurm" / "42_submitted.pkl", "rb") as f:
    job = pickle.load(f).function
  assert isinstance(job, launch.TrainJob) and job.workdir == str(workdir)
  assert job.config.model.pool == "avg"

  # Submitted again while that job is queued: refused, nothing submitted.
  (fake_slurm / "squeue.txt").write_text("42 PENDING\n")
  again = run_cli("cnn_jax.launch", "--config=configs/lenet5_digits.py",
                  "--config.data.batch_size=128", f"--workdir={workdir}", "--nodes=2",
                  "--gpus_per_node=8")
  assert again.returncode == 2
  assert again.stderr.startswith("error: job 42 for") and "still queued or running" in again.stderr
  assert len(_scripts(fake_slurm)) == 1


@pytest.mark.parametrize("args, message", [
    (("--nodes=2", "--gpus_per_node=3"),
     "data.batch_size=128 does not split over --nodes=2 x --gpus_per_node=3 = 6 devices"),
    (("--nodes=3", "--tasks_per_node=1"),
     "data.batch_size=128 does not split over --nodes=3 x --tasks_per_node=1 = 3 devices"),
    (("--nodes=0",), "--nodes must be >= 1"),
    # The run's own checks of its config: refused before the job waits in the queue to fail.
    (("--config.model.name=resnet5000",), "unknown model 'resnet5000'"),
    (("--config.optimizer.layer_decay=2",), "optimizer.layer_decay=2.0 must be in (0, 1]"),
])
def test_launch_refuses_what_the_job_would_fail_on(tmp_path, fake_slurm, args, message):
  result = run_cli("cnn_jax.launch", "--config=configs/lenet5_digits.py",
                   "--config.data.batch_size=128", f"--workdir={tmp_path / 'run'}", *args)
  assert result.returncode == 2
  assert result.stderr.startswith(f"error: {message}"), result.stderr
  assert result.stderr.strip().count("\n") == 0
  assert not _scripts(fake_slurm) and not (tmp_path / "run").exists()


def test_slurm_time_strings():
  assert [launch.time_minutes(t) for t in ("90", "5:30", "1:00:00", "2-0", "1-12:30",
                                           "0-0:0:1")] == [90, 6, 60, 2880, 2190, 1]
  assert launch.time_minutes("an hour") is None  # sbatch says what is wrong with it


class _FakeLocalExecutor:
  """submitit.LocalExecutor's interface; a job is done after a few polls and leaves what a
  finished point leaves (final_metrics.json)."""
  log: list = []

  def __init__(self, folder):
    self.folder, self.parameters = folder, {}

  def update_parameters(self, **kwargs):
    self.parameters.update(kwargs)

  def submit(self, job):
    executor = self

    class Job:
      job_id = str(len(executor.log))
      polls = 0
      paths = type("Paths", (), {"stdout": f"{executor.folder}/%t.log"})

      def done(self):
        self.polls += 1
        running = sum(1 for j in executor.log if j[2].polls < 3)
        executor.log[-1][3] = max(executor.log[-1][3], running)
        if self.polls >= 3:
          os.makedirs(job.workdir, exist_ok=True)
          with open(os.path.join(job.workdir, "final_metrics.json"), "w") as f:
            f.write('{"step": 4}')
          return True
        return False

      def result(self):
        return "finished"

    handle = Job()
    executor.log.append([job.point.name, self.parameters["visible_gpus"], handle, 0])
    return handle


def test_local_parallel_keeps_n_points_running_with_their_own_gpus(tmp_path, monkeypatch):
  import submitit
  monkeypatch.setattr(submitit, "LocalExecutor", _FakeLocalExecutor)
  monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
  _FakeLocalExecutor.log = []
  config = make_sweep(grid=[("seed", (0, 1, 2, 3, 4))], summarize=False)
  rows = sweep.run_sweep(config, str(tmp_path / "sweep"), parallel=2, gpus_per_point=2)
  log = _FakeLocalExecutor.log
  assert [entry[0] for entry in log] == [f"seed-{i}" for i in range(5)]
  assert {tuple(entry[1]) for entry in log} == {(0, 1), (2, 3)}  # two slots, two GPUs each
  assert max(entry[3] for entry in log) == 2  # never more than --parallel at once
  assert [r["status"] for r in rows] == ["finished"] * 5
  assert len(json.load(open(tmp_path / "sweep" / "submissions.json"))["submissions"][0]
             ["points"]) == 5


@pytest.mark.slow
def test_local_parallel_runs_points_in_processes_and_writes_tables(tmp_path):
  workdir = tmp_path / "sweep"
  rows = sweep.run_sweep(make_sweep(summarize=False), str(workdir), launcher="local",
                         parallel=2)
  assert [r["status"] for r in rows] == ["finished", "finished"]
  assert (workdir / "results.md").exists()
  record = json.load(open(workdir / "submissions.json"))["submissions"]
  assert record[0]["launcher"] == "local" and len(record[0]["points"]) == 2
  for row in rows:
    log = json.load(open(workdir / row["point"] / "submission.json"))["log"]
    assert "final" in open(log).read() or os.path.getsize(log) > 0


def test_an_unknown_slurm_parameter_is_one_line():
  result = run_cli("cnn_jax.launch", "--config=configs/lenet5_digits.py", "--workdir=w",
                   "--slurm.partiton=gpu")
  assert result.returncode == 2
  assert result.stderr.startswith("error: unknown SLURM parameter --slurm.partiton; did you "
                                  "mean --slurm.partition?"), result.stderr
  assert result.stderr.strip().count("\n") == 0
