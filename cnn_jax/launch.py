"""Training runs submitted to SLURM through submitit: one run on one or many nodes, or (from
cnn_jax.sweep) the points of a sweep as one job array.

  python -m cnn_jax.launch --config configs/X.py --workdir DIR --nodes 2 --gpus_per_node 8 \
      --slurm.partition=P --slurm.time=24:00:00

returns once SLURM has the job, printing its id and where the logs go (DIR/slurm/).

Processes: one per GPU (SLURM tasks per node = --gpus_per_node; on CPU nodes,
--tasks_per_node, default 1). That is the layout jax.distributed.initialize() reads from
SLURM's environment by itself: each task's SLURM_LOCALID picks its GPU, the job's first node
hosts the coordinator, and the ConvNeXt recipes we follow were tuned with one process per GPU.
The global batch (config.data.batch_size) is split over all processes; it must divide evenly.

Preemption and time limits: SLURM sends SIGUSR2 90 s before the time limit (submitit's
`--signal`) and SIGTERM on preemption or `scancel --signal=TERM`. Both reach the training
loop's SIGTERM stop (train._TerminationSignal): every process saves the same step and returns;
process 0 then requeues the job (`scontrol requeue`, submitit's Checkpointable contract), and
the requeued job resumes from the workdir, bit-exact.

Every submission leaves in the workdir what was submitted: submission.json (job id, git commit,
command line, SLURM parameters, the resolved config) and submitit's sbatch script and pickles
under slurm/.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
import submitit
from absl import flags

from cnn_jax import cli, hostenv
from cnn_jax.errors import UserError

FLAGS = flags.FLAGS
SUBMISSION_RECORD = "submission.json"
# squeue states of a job that is, or will be, running.
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
                 "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")


def slurm_config() -> ml_collections.ConfigDict:
  """The `--slurm.*` flags: what a cluster asks for, as sbatch names them."""
  config = ml_collections.ConfigDict()
  config.partition = ""           # "" = the cluster's default partition
  config.time = "1:00:00"         # sbatch --time: minutes, H:MM:SS or D-HH:MM:SS
  config.gpus_per_node = 0        # sweeps: GPUs of each point (one node); launch: --gpus_per_node
  config.cpus_per_task = 0        # 0 = the cluster's default
  config.mem_gb = 0               # 0 = the cluster's default
  config.max_parallel = 0         # sweeps: points running at once (job array %N); 0 = no cap
  config.account = ""
  config.qos = ""
  config.constraint = ""
  config.setup = ""               # shell lines run before the job's tasks, ";"-separated
  config.max_requeues = 10        # preemptions / time limits a job survives
  return config


def define_slurm_flag() -> None:
  from ml_collections import config_flags
  try:
    config_flags.DEFINE_config_dict(
        "slurm", slurm_config(), "SLURM parameters: --slurm.partition, --slurm.time, "
        "--slurm.max_parallel, ... (see docs/clusters.md).")
  except (KeyError, AttributeError):
    # config_flags reads the --slurm.* overrides of sys.argv as it defines the flag.
    cli.fail(unknown_slurm_field(sys.argv))


def unknown_slurm_field(argv: Sequence[str]) -> str:
  fields = list(slurm_config().keys())
  for arg in argv:
    if arg.startswith("--slurm."):
      name = arg[len("--slurm."):].split("=", 1)[0]
      if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f"; did you mean --slurm.{close[0]}?" if close else ""
        return f"unknown SLURM parameter --slurm.{name}{hint} (known: {', '.join(fields)})"
  return "bad --slurm.* flag"


def check_sbatch() -> None:
  if shutil.which("sbatch") is None or shutil.which("srun") is None:
    raise UserError("--launcher slurm needs SLURM's sbatch and srun on the PATH (not found); "
                    "run this on a cluster login node, or use --launcher local")


_TIME = re.compile(r"^(?:(?P<d>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def time_minutes(text: str) -> int | None:
  """sbatch --time in whole minutes (rounded up), or None when it is no SLURM time (sbatch
  then refuses it in its own words)."""
  match = _TIME.match(str(text).strip())
  if not match:
    return None
  d = int(match["d"] or 0)
  parts = [int(p) for p in (match["a"], match["b"], match["c"]) if p is not None]
  if match["d"] is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
    h, m, s = (parts + [0, 0])[:3]
  elif len(parts) == 1:  # MM
    h, m, s = 0, parts[0], 0
  elif len(parts) == 2:  # MM:SS
    h, (m, s) = 0, parts
  else:  # HH:MM:SS
    h, m, s = parts
  return d * 1440 + h * 60 + m + (1 if s else 0)


def executor_parameters(slurm: ml_collections.ConfigDict, *, job_name: str, nodes: int = 1,
                        tasks_per_node: int = 1, gpus_per_node: int = 0,
                        array_parallelism: int = 0) -> dict[str, Any]:
  """submitit.SlurmExecutor parameters for `slurm` (the names are sbatch's)."""
  minutes = time_minutes(slurm.time)
  params: dict[str, Any] = dict(
      job_name=re.sub(r"[^A-Za-z0-9_.:=+-]+", "_", job_name)[:100], nodes=nodes, ntasks_per_node=tasks_per_node,
      # An unparsable time goes to sbatch as given: SLURM's own error says what is wrong.
      time=minutes if minutes is not None else str(slurm.time),
      signal_delay_s=90, stderr_to_stdout=True,
      setup=[f"export PYTHONPATH={shlex.quote(cli.REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}",
             *[line.strip() for line in slurm.setup.split(";") if line.strip()]])
  if gpus_per_node:
    params["gpus_per_node"] = gpus_per_node
    # This tool may run on a CPU-only login node, under the malloc settings it gave itself;
    # the job's processes run on GPUs, where those settings are left out (hostenv).
    tunables = hostenv.without_malloc_tunables(os.environ.get("GLIBC_TUNABLES", ""))
    params["setup"].append(f"export GLIBC_TUNABLES={shlex.quote(tunables)}" if tunables
                           else "unset GLIBC_TUNABLES")
  if array_parallelism:
    params["array_parallelism"] = array_parallelism
  for key in ("partition", "account", "qos", "constraint"):
    if slurm[key]:
      params[key] = slurm[key]
  if slurm.cpus_per_task:
    params["cpus_per_task"] = slurm.cpus_per_task
  if slurm.mem_gb:
    params["mem"] = f"{slurm.mem_gb}GB"
  return params


def slurm_executor(folder: str, params: dict[str, Any], max_requeues: int = 10) -> Any:
  executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
  executor.update_parameters(**params)
  return executor


def submit(executor: Any, jobs: Sequence[Any]) -> list[Any]:
  """Submits `jobs` (one -> one job, several -> one job array); sbatch's refusal as UserError."""
  from submitit.core.utils import FailedJobError, FailedSubmissionError
  try:
    if len(jobs) == 1:
      return [executor.submit(jobs[0])]
    return executor.submit_array(list(jobs))
  except (FailedJobError, FailedSubmissionError, subprocess.SubprocessError, OSError) as e:
    raise UserError(f"sbatch refused the job: {_sbatch_error(str(e))}") from None


def _sbatch_error(text: str) -> str:
  """The line of sbatch's output that says why (the last `error:` line), else all of it."""
  errors = [line.split("error:", 1)[1].strip() for line in text.splitlines() if "error:" in line]
  return errors[-1] if errors else cli.one_line(Exception(text))


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
  """{job id ("123" or array element "123_4"): squeue state} of jobs SLURM still knows."""
  ids = sorted({str(j).split("_")[0] for j in job_ids if j})
  if not ids or shutil.which("squeue") is None:
    return {}
  result = subprocess.run(["squeue", "--noheader", "--array", "--format=%i %T",
                           f"--jobs={','.join(ids)}"], capture_output=True, text=True)
  states = {}
  for line in result.stdout.splitlines():
    parts = line.split()
    if len(parts) == 2:
      states[parts[0]] = parts[1]
  return states


def is_active(job_id: str, states: dict[str, str]) -> bool:
  """A job (or array element) that is queued or running, per `states`. A pending array shows
  as 123_[0-2%2] in squeue until its elements start."""
  if states.get(job_id) in ACTIVE_STATES:
    return True
  base, _, index = job_id.partition("_")
  for key, state in states.items():
    if state in ACTIVE_STATES and key.startswith(f"{base}_[") and index:
      if int(index) in _array_indices(key):
        return True
  return False


def _array_indices(key: str) -> set[int]:
  spec = key.split("[", 1)[1].rstrip("]").split("%")[0]
  out = set()
  for part in spec.split(","):
    lo, _, hi = part.partition("-")
    if lo.isdigit():
      out.update(range(int(lo), int(hi or lo) + 1))
  return out


def git_commit() -> str:
  """HEAD of the repository, with "+dirty" when its tracked files differ (what ran is then
  not exactly that commit)."""
  try:
    head = subprocess.run(["git", "-C", cli.REPO_ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "-C", cli.REPO_ROOT, "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True,
                           timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return (head or "unknown") + ("+dirty" if dirty else "")


def write_json(path: str, payload: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------- inside the job

def _forward_to_sigterm(signum, frame) -> None:
  del signum, frame
  os.kill(os.getpid(), signal.SIGTERM)


def _job_environment() -> Any:
  try:
    return submitit.JobEnvironment()
  except RuntimeError:  # Not inside a submitit job (a test calling the job directly).
    return None


def requeue(reason: str) -> bool:
  """Puts this SLURM job (array element) back in the queue; False when not under SLURM or
  SLURM refused (a job being cancelled cannot be requeued)."""
  env = _job_environment()
  if env is None or env.cluster != "slurm":
    return False
  try:
    subprocess.run(["scontrol", "requeue", env.job_id], check=True, capture_output=True,
                   text=True, timeout=60)
  except (OSError, subprocess.SubprocessError) as e:
    print(f"not requeued ({reason}): {cli.one_line(e)}", flush=True)
    return False
  print(f"requeued job {env.job_id} ({reason}); it resumes from its workdir", flush=True)
  return True


class TrainJob(submitit.helpers.Checkpointable):
  """One training run as a submitit job: every task of the job calls it.

  Checkpointable's `checkpoint()` (submitit's requeue hook) resubmits the job as it is: the
  workdir holds the state, so the requeued job resumes from it.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir

  def train(self) -> str:
    """Runs (or resumes) the training: 'finished', 'failed: ...' or 'interrupted'."""
    from cnn_jax import main
    try:
      main.run_training(self.config, self.workdir)
    except FloatingPointError as e:  # Diverged: a result, not something to retry.
      print(f"error: {e}", flush=True)
      return f"failed: {e}"
    finished = os.path.exists(os.path.join(self.workdir, "final_metrics.json"))
    return "finished" if finished else "interrupted"

  def __call__(self) -> str:
    hostenv.configure_jax()  # Before JAX starts a backend, as the tools do.
    # SLURM's time-limit warning (submitit's SIGUSR2) takes the loop's preemption path.
    signal.signal(signal.SIGUSR2, _forward_to_sigterm)
    env = _job_environment()
    import jax
    from cnn_jax import parallel
    if env is not None and env.num_tasks > 1:
      parallel.initialize_distributed(None, None, None, auto=True)
    with parallel.stop_all_on_failure():
      status = self.train()
    # Stopped before the last step, and not by halt_after_steps: a signal (preemption, time
    # limit, scancel --signal=TERM) after the loop saved. Process 0 requeues the job.
    if status == "interrupted" and not self.config.halt_after_steps \
        and jax.process_index() == 0:
      requeue("stopped by a signal before the last step")
    print(f"job {env.job_id if env else ''}: {status}", flush=True)
    return status


# ---------------------------------------------------------------------------- the tool

def define_flags() -> None:
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None, "The run's directory, shared by all nodes.")
  flags.DEFINE_integer("nodes", 1, "Nodes of the job.")
  flags.DEFINE_integer("gpus_per_node", 0, "GPUs per node (one process per GPU); 0 = CPU.")
  flags.DEFINE_integer("tasks_per_node", 0, "Processes per node (default: --gpus_per_node, "
                       "or 1 on CPU nodes).")
  define_slurm_flag()


def tasks_per_node(gpus_per_node: int, requested: int) -> int:
  if requested and gpus_per_node and requested != gpus_per_node:
    raise UserError(f"--tasks_per_node={requested} with --gpus_per_node={gpus_per_node}: one "
                    "process per GPU, leave --tasks_per_node unset")
  return requested or gpus_per_node or 1


def check_layout(config: ml_collections.ConfigDict, nodes: int, gpus_per_node: int,
                 tasks: int) -> None:
  if nodes < 1 or gpus_per_node < 0 or tasks < 1:
    raise UserError(f"--nodes must be >= 1 and --gpus_per_node >= 0 (got {nodes}, "
                    f"{gpus_per_node})")
  shards = nodes * (gpus_per_node or tasks)
  what = (f"--nodes={nodes} x --gpus_per_node={gpus_per_node}" if gpus_per_node
          else f"--nodes={nodes} x --tasks_per_node={tasks}")
  for field in ("batch_size", "eval_batch_size"):
    size = config.data[field]
    if size % shards:
      raise UserError(f"data.{field}={size} does not split over {what} = {shards} "
                      f"devices; choose a multiple of {shards}")


def check_not_running(workdir: str) -> None:
  """Refuses a second submission while the workdir's last job is still queued or running."""
  last = read_json(os.path.join(workdir, SUBMISSION_RECORD)).get("job_id")
  if last and is_active(str(last), queue_states([str(last)])):
    raise UserError(f"job {last} for {workdir} is still queued or running; nothing submitted "
                    f"(scancel {last} first, or wait)")


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  config = cli.config_value("config", "configs/lenet5_digits.py")
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  slurm = FLAGS.slurm
  gpus = FLAGS.gpus_per_node or slurm.gpus_per_node
  tasks = tasks_per_node(gpus, FLAGS.tasks_per_node)
  check_layout(config, FLAGS.nodes, gpus, tasks)
  # The run's own checks of its config, before the job waits in the queue to fail them.
  from cnn_jax import train  # Imports JAX: only when a job is to be submitted.
  train.check_config(config, process_count=FLAGS.nodes * tasks)
  check_sbatch()
  workdir = os.path.abspath(FLAGS.workdir)
  check_not_running(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {workdir!r}: {e.strerror or e}") from None
  params = executor_parameters(slurm, job_name=f"cnn_jax:{os.path.basename(workdir)}",
                               nodes=FLAGS.nodes, tasks_per_node=tasks, gpus_per_node=gpus)
  folder = os.path.join(workdir, "slurm")
  executor = slurm_executor(folder, params, slurm.max_requeues)
  record = {"submitted": now(), "git_commit": git_commit(), "command": shlex.join(sys.argv),
            "cwd": os.getcwd(), "host": socket.gethostname(), "slurm": params,
            "config": json.loads(config.to_json_best_effort())}
  # The class from its module, not from __main__ (`python -m`): the job imports it by name.
  from cnn_jax import launch
  (job,) = submit(executor, [launch.TrainJob(config, workdir)])
  record.update(job_id=str(job.job_id), sbatch_script=str(job.paths.submission_file),
                log=str(job.paths.stdout).replace("%t", "0"))
  write_json(os.path.join(workdir, SUBMISSION_RECORD), record)
  print(f"submitted job {job.job_id}: {FLAGS.nodes} node(s) x {tasks} process(es); "
        f"log {record['log']}", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags, process_settings=False)
