"""Sweeps: one base experiment config, a grid of overrides, one workdir per point, one table.

  python -m cnn_jax.sweep --config configs/sweeps/degradation_digits.py [--workdir DIR]
  python -m cnn_jax.sweep --config configs/sweeps/X.py --print_commands   # for a scheduler
  python -m cnn_jax.sweep --config configs/sweeps/X.py --collect_only     # tables and plots only

A sweep config's get_config() returns a ConfigDict with:
  name             the sweep's name (titles of the table and plots)
  base_config      path of the experiment config (relative to the working directory, else to the
                   repository root), and base_config_arg, the argument of its get_config ("" = none)
  workdir          default sweep workdir (--workdir overrides it); point P trains in workdir/P
  overrides        [(dotted key, value), ...] applied to every point
  points           [{dotted key: value, ...}, ...] explicit points ([] = one empty point)
                   (the key "base_config_arg" in a point or the grid picks that point's
                   argument of the base config's get_config, e.g. one preset model per point)
  grid             [(dotted key, (value, ...)), ...] crossed with every point (cartesian product)
  plot_metrics     metrics.jsonl keys to plot against the step; "x/error" is 1 - "x/accuracy"
  summarize        add params and MACs of each point's model (cnn_jax.summary) to the table

Every override is checked against the base config (the key must exist, the value must fit the
field's type, the model name must be registered) before anything runs. Points run one after
another in this process through train.train_and_evaluate: a point whose workdir holds
final_metrics.json is skipped, an interrupted one resumes from its last checkpoint. A point
that diverges (non-finite loss) is recorded as failed and the sweep goes on. The sweep workdir
then gets results.md, results.csv and curves.png.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags, logging

from cnn_jax import cli, launch
# The sweep's configs load like any config file (configs/sweeps/* and the experiments use these
# names from here).
from cnn_jax.cli import load_config_file, load_module, resolve_path  # noqa: F401
from cnn_jax.errors import UserError

FLAGS = flags.FLAGS
LAUNCHERS = ("local", "slurm")


def define_flags() -> None:
  cli.define_config_flag(help_text="Path to a sweep config (configs/sweeps/*.py).")
  flags.DEFINE_string("workdir", None, "Sweep workdir (default: the config's workdir).")
  flags.DEFINE_bool(
      "print_commands", False, "Write one `python -m cnn_jax.main ...` command per point to "
      "WORKDIR/commands.sh and stdout instead of training.")
  flags.DEFINE_bool(
      "collect_only", False, "Train nothing: build the table and plots from the points' "
      "workdirs.")
  flags.DEFINE_bool("status", False, "Print each point's state (pending / running / done / "
                    "failed / stopped / not run), step and latest metric; change nothing.")
  flags.DEFINE_enum("launcher", "local", LAUNCHERS, "local: on this machine (--parallel at "
                    "once); slurm: one job array, one task per point (--slurm.*).")
  flags.DEFINE_integer("parallel", 1, "local: points trained at once, each in its own "
                       "process (1 = one after another in this process).")
  flags.DEFINE_integer("gpus_per_point", 0, "local with --parallel > 1: GPUs given to each "
                       "point (CUDA_VISIBLE_DEVICES); 0 = the points run on the CPU.")
  launch.define_slurm_flag()


REPO_ROOT = cli.REPO_ROOT
FINAL_METRICS = "final_metrics.json"
POINT_RECORD = "sweep_point.json"  # overrides, accumulated wall time, failure reason
SUBMISSIONS = "submissions.json"   # every job submitted for the sweep, newest last


@dataclasses.dataclass
class Point:
  name: str
  overrides: dict[str, Any]       # the point's own overrides (what varies across points)
  config: ml_collections.ConfigDict  # base config with the shared and point overrides applied
  base_config_arg: str = ""        # the argument of the base config's get_config


BASE_CONFIG_ARG = "base_config_arg"  # a point key that is no config field: the base config's arg


# ----------------------------------------------------------------------------- configs

def set_override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """config.<key> = value for a dotted key; UserError when the key or the value's type is wrong."""
  node = config
  *parents, leaf = key.split(".")
  for depth, part in enumerate(parents):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise UserError(f"unknown config field in sweep override {key!r}: "
                      f"{'.'.join(parents[:depth + 1])} does not exist in the base config")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise UserError(f"unknown config field in sweep override {key!r}")
  current = node[leaf]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise UserError(f"bad value {value!r} for sweep override {key!r} "
                    f"(the field holds {type(current).__name__}): {cli.one_line(e)}") from None


def _pairs(field: Any, what: str) -> list[tuple[str, Any]]:
  try:
    pairs = [(str(k), v) for k, v in field]
  except (TypeError, ValueError):
    raise UserError(f"sweep {what} must be a list of (dotted key, value) pairs, "
                    f"got {field!r}") from None
  return pairs


def expand_grid(points: Sequence[dict[str, Any]], grid: Sequence[tuple[str, Sequence[Any]]]
                ) -> list[dict[str, Any]]:
  """Every explicit point crossed with the cartesian product of the grid, in config order."""
  if not points and not grid:
    raise UserError("the sweep is empty: give `points` or a `grid`")
  for key, values in grid:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise UserError(f"grid entry {key!r} needs a non-empty list of values, got {values!r}")
  expanded = []
  for point in (points or [{}]):
    for combo in itertools.product(*(values for _, values in grid)):
      expanded.append({**dict(point), **{key: v for (key, _), v in zip(grid, combo)}})
  return expanded


def _value_text(value: Any) -> str:
  return str(value) if not isinstance(value, float) else f"{value:g}"


def point_name(overrides: dict[str, Any]) -> str:
  """A directory name that says what the point is: key-value pairs, filesystem-safe."""
  text = "_".join(f"{k}-{_value_text(v)}" for k, v in overrides.items()) or "base"
  return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text.replace(" ", ""))[:180]


def _load_base(path: str, arg: str) -> ml_collections.ConfigDict:
  if not os.path.isfile(resolve_path(path)):
    raise UserError(f"base config not found: {path}")
  return load_config_file(path, arg)


def build_points(sweep: ml_collections.ConfigDict) -> list[Point]:
  """Validates the whole sweep against the base config before anything runs."""
  bases = {sweep.base_config_arg: _load_base(sweep.base_config, sweep.base_config_arg)}
  shared = _pairs(sweep.overrides, "overrides")
  grid = _pairs(sweep.grid, "grid")
  raw_points = list(sweep.points)
  for p in raw_points:
    if not isinstance(p, dict):
      raise UserError(f"sweep points must be dicts of dotted key -> value, got {p!r}")
  from cnn_jax import train  # Imports JAX: only once the flags are parsed.

  points, names = [], set()
  for overrides in expand_grid(raw_points, grid):
    arg = str(overrides.get(BASE_CONFIG_ARG, sweep.base_config_arg))
    if arg not in bases:
      bases[arg] = _load_base(sweep.base_config, arg)
    config = bases[arg].copy_and_resolve_references()
    config.lock()
    # A model option the base config does not list is added last: after any model.name.
    items = [(k, v) for k, v in [*shared, *overrides.items()] if k != BASE_CONFIG_ARG]
    options = [cli.unlisted_model_option(config, key) for key, _ in items]
    for (key, value), option in zip(items, options):
      if option is None:
        set_override(config, key, value)
    for (_, value), option in zip(items, options):
      if option is not None:
        cli.add_model_option(config, option, value)
    name = point_name(overrides)
    try:
      train.check_config(config)  # the run's own checks, for every point before any runs
    except UserError as e:
      raise UserError(f"sweep point {name}: {e}") from None
    if name in names:
      raise UserError(f"two sweep points have the same overrides: {overrides}")
    names.add(name)
    points.append(Point(name, overrides, config, arg))
  return points


# ----------------------------------------------------------------------------- running

def _command_value(value: Any) -> str:
  return repr(value) if isinstance(value, (tuple, list)) else str(value)


def point_command(sweep: ml_collections.ConfigDict, point: Point, sweep_workdir: str) -> str:
  """The `python -m cnn_jax.main` command that trains `point` on its own."""
  config_arg = sweep.base_config + (f":{point.base_config_arg}" if point.base_config_arg else "")
  args = ["python", "-m", "cnn_jax.main", f"--config={config_arg}",
          f"--workdir={os.path.join(sweep_workdir, point.name)}"]
  for key, value in [*_pairs(sweep.overrides, "overrides"), *point.overrides.items()]:
    if key != BASE_CONFIG_ARG:
      args.append(f"--config.{key}={_command_value(value)}")
  return " ".join(shlex.quote(a) for a in args)


_read_json, _write_json = launch.read_json, launch.write_json


def run_point(point: Point, workdir: str) -> str:
  """Trains one point unless it finished: 'skipped', 'finished' or 'failed: ...'."""
  if os.path.exists(os.path.join(workdir, FINAL_METRICS)):
    return "skipped"
  from cnn_jax import main as main_tool

  os.makedirs(workdir, exist_ok=True)
  record_path = os.path.join(workdir, POINT_RECORD)
  record = _read_json(record_path)
  record.update(overrides=point.overrides, error=None)
  start = time.perf_counter()
  status = "finished"
  try:
    main_tool.run_training(point.config, workdir)  # as cnn_jax.main runs a config
  except FloatingPointError as e:  # Diverged: a result of the sweep, not a reason to stop it.
    status = f"failed: {e}"
    record["error"] = str(e)
  finally:
    record["wall_s"] = record.get("wall_s", 0.0) + time.perf_counter() - start
    _write_json(record_path, record)
  if status == "finished" and not os.path.exists(os.path.join(workdir, FINAL_METRICS)):
    status = "interrupted"  # halt_after_steps or a signal: a rerun resumes.
  return status


# ----------------------------------------------------------------------------- collecting

def read_curves(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """metrics.jsonl as {metric: [(step, value), ...]}; a resumed run's repeated steps keep the
  last value written."""
  curves: dict[str, dict[int, float]] = {}
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          row = json.loads(line)
        except ValueError:
          continue  # A line cut short by a kill.
        step = int(row.pop("step"))
        for key, value in row.items():
          curves.setdefault(key, {})[step] = float(value)
  except OSError:
    return {}
  out = {k: sorted(v.items()) for k, v in curves.items()}
  for key in list(out):  # Derived error curves, as in the papers' figures.
    if key.endswith("/accuracy"):
      out[key[:-len("accuracy")] + "error"] = [(s, 1.0 - v) for s, v in out[key]]
  return out


def _model_summary(config: ml_collections.ConfigDict, cache: dict[str, dict[str, Any]]
                   ) -> dict[str, Any]:
  from cnn_jax import summary

  # The model's own image_size option (LeNet, ViT) is the size the data has anyway.
  kwargs = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "image_size")}
  key = json.dumps([config.model.name, config.data.image_size, kwargs], sort_keys=True,
                   default=str)
  if key not in cache:
    try:
      result = summary.summarize(config.model.name, image_size=config.data.image_size,
                                 **kwargs)
      cache[key] = {"params": result["params"], "macs": result["macs"]}
    except UserError as e:
      logging.warning("no summary for %s: %s", config.model.name, e)
      cache[key] = {"params": None, "macs": None}
  return cache[key]


def collect(points: Sequence[Point], sweep_workdir: str, with_summary: bool
            ) -> list[dict[str, Any]]:
  """One row per point: its overrides, final test metrics, last train metrics, model size."""
  rows, cache = [], {}
  for point in points:
    workdir = os.path.join(sweep_workdir, point.name)
    final = _read_json(os.path.join(workdir, FINAL_METRICS))
    record = _read_json(os.path.join(workdir, POINT_RECORD))
    curves = read_curves(workdir)
    if final:
      status = "finished"
    elif record.get("error"):
      status = "failed"
    elif curves:
      status = "partial"
    else:
      status = "not run"

    def last(metric: str) -> float | None:
      return curves[metric][-1][1] if curves.get(metric) else None

    row = {"point": point.name, **point.overrides, "status": status,
           "step": final.get("step") or (max((s for c in curves.values() for s, _ in c),
                                              default=None)),
           "test_loss": final.get("loss"),
           "test_error": (1.0 - final["accuracy"]) if "accuracy" in final else None,
           "train_loss": last("train/loss"), "train_error": last("train/error"),
           "wall_s": record.get("wall_s")}
    if with_summary:
      size = _model_summary(point.config, cache)
      row["params"] = size["params"]
      row["gmacs"] = size["macs"] / 1e9 if size["macs"] is not None else None
    rows.append(row)
  return rows


def _cell(key: str, value: Any) -> str:
  if value is None:
    return "-"
  if key in ("test_error", "train_error"):
    return f"{100 * value:.2f}"
  if key == "params":
    return f"{value:,}"
  if key == "gmacs":
    return f"{value:.4f}"
  if key == "wall_s":
    return f"{value:.0f}"
  if isinstance(value, float):
    return f"{value:.4f}"
  return str(value)


_HEADERS = {"test_error": "test error %", "train_error": "train error % (last log)",
            "test_loss": "test loss", "train_loss": "train loss (last log)",
            "gmacs": "GMACs", "wall_s": "wall s"}


def write_tables(rows: list[dict[str, Any]], sweep_workdir: str, title: str) -> tuple[str, str]:
  """results.md (rounded, for reading) and results.csv (raw numbers), same columns."""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  md_path = os.path.join(sweep_workdir, "results.md")
  csv_path = os.path.join(sweep_workdir, "results.csv")
  lines = [f"# {title}", "",
           "| " + " | ".join(_HEADERS.get(c, c) for c in columns) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |")
  lines += ["", "Errors are 1 - accuracy. test = the config's eval split at the last step; "
            "train = the mean over the last logging interval (augmented batches). "
            "MACs: one image at data.image_size (cnn_jax.summary)."]
  with open(md_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({c: row.get(c) for c in columns})
  return md_path, csv_path


def plot_curves(points: Sequence[Point], sweep_workdir: str, metrics: Sequence[str],
                title: str) -> str | None:
  """curves.png: one panel per metric, one line per point."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves = {p.name: read_curves(os.path.join(sweep_workdir, p.name)) for p in points}
  metrics = [m for m in metrics if any(m in c for c in curves.values())]
  if not metrics:
    return None
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for point in points:
      series = curves[point.name].get(metric)
      if series:
        steps, values = zip(*series)
        ax.plot(steps, values, label=point.name, marker="." if len(steps) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    if metric.endswith(("loss", "error")) and all(
        v > 0 for c in curves.values() for _, v in c.get(metric, [])):
      ax.set_yscale("log")
  axes[0][-1].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(sweep_workdir, "curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------- entry point

class PointJob(launch.TrainJob):
  """One sweep point as a submitit job (a SLURM array task, or a local process): run_point
  records its wall time and a divergence as the sequential sweep does."""

  def __init__(self, point: Point, workdir: str):
    super().__init__(point.config, workdir)
    self.point = point

  def train(self) -> str:
    status = run_point(self.point, self.workdir)
    return "finished" if status == "skipped" else status


def _point_job(point: Point, sweep_workdir: str) -> PointJob:
  # The class from its module, not from __main__ (`python -m cnn_jax.sweep`): the job process
  # imports it by name.
  from cnn_jax import sweep
  return sweep.PointJob(point, os.path.join(sweep_workdir, point.name))


def _is_done(sweep_workdir: str, point: Point) -> bool:
  return os.path.exists(os.path.join(sweep_workdir, point.name, FINAL_METRICS))


def point_jobs(sweep_workdir: str) -> dict[str, str]:
  """{point name: id of the newest SLURM job submitted for it} (a local run's ids are pids,
  nothing squeue could answer for)."""
  latest = {}
  for submission in _read_json(os.path.join(sweep_workdir, SUBMISSIONS)).get("submissions", []):
    if submission.get("launcher") == "slurm":
      latest.update(submission.get("points", {}))
  return latest


def _record_submission(sweep_workdir: str, entry: dict[str, Any]) -> None:
  path = os.path.join(sweep_workdir, SUBMISSIONS)
  record = _read_json(path)
  record.setdefault("submissions", []).append(entry)
  _write_json(path, record)


def _submission_entry(launcher: str, params: dict[str, Any]) -> dict[str, Any]:
  return {"submitted": launch.now(), "launcher": launcher, "git_commit": launch.git_commit(),
          "command": shlex.join([sys.executable, "-m", "cnn_jax.sweep", *sys.argv[1:]]),
          "cwd": os.getcwd(), "parameters": params}


def _write_point_records(sweep_workdir: str, jobs: Sequence[tuple[Point, Any]],
                         entry: dict[str, Any]) -> None:
  """Each point's workdir says what was submitted for it (point 4 of the cluster workflow)."""
  for point, job in jobs:
    workdir = os.path.join(sweep_workdir, point.name)
    launch.write_json(os.path.join(workdir, launch.SUBMISSION_RECORD), {
        **{k: v for k, v in entry.items() if k != "points"}, "job_id": str(job.job_id),
        "sbatch_script": str(job.paths.submission_file) if entry["launcher"] == "slurm" else None,
        "log": str(job.paths.stdout).replace("%t", "0"), "overrides": point.overrides,
        "config": json.loads(point.config.to_json_best_effort())})


def submit_slurm(sweep: ml_collections.ConfigDict, points: Sequence[Point], sweep_workdir: str,
                 slurm: ml_collections.ConfigDict) -> list[Any]:
  """The points not done yet, as one SLURM job array; nothing when one of the sweep's jobs is
  still queued or running (a second submission would train the same points twice)."""
  launch.check_sbatch()
  latest = point_jobs(sweep_workdir)
  states = launch.queue_states(list(latest.values()))
  active = sorted({job for name, job in latest.items() if launch.is_active(job, states)})
  if active:
    raise UserError(f"this sweep is already running (job {', '.join(active)} queued or "
                    f"running); nothing submitted. Watch it with --status, or scancel it first")
  todo = [p for p in points if not _is_done(sweep_workdir, p)]
  if not todo:
    print(f"all {len(points)} points are done; nothing submitted", flush=True)
    return []
  params = launch.executor_parameters(
      slurm, job_name=f"cnn_jax:{sweep.name}"[:100], gpus_per_node=slurm.gpus_per_node,
      array_parallelism=slurm.max_parallel)
  executor = launch.slurm_executor(os.path.join(sweep_workdir, "slurm"), params,
                                   slurm.max_requeues)
  jobs = launch.submit(executor, [_point_job(p, sweep_workdir) for p in todo])
  entry = _submission_entry("slurm", params)
  entry.update(job_id=str(jobs[0].job_id).split("_")[0],
               sbatch_script=str(jobs[0].paths.submission_file),
               points={p.name: str(j.job_id) for p, j in zip(todo, jobs)})
  _record_submission(sweep_workdir, entry)
  _write_point_records(sweep_workdir, list(zip(todo, jobs)), entry)
  skipped = len(points) - len(todo)
  print(f"submitted job {entry['job_id']}: {len(todo)} point(s)"
        + (f", {skipped} already done" if skipped else "")
        + (f", at most {slurm.max_parallel} at once" if slurm.max_parallel else "")
        + f"; logs in {os.path.join(sweep_workdir, 'slurm')}/; "
        f"watch with --status, tables with --collect_only", flush=True)
  return jobs


def run_local_parallel(points: Sequence[Point], sweep_workdir: str, parallel: int,
                       gpus_per_point: int) -> None:
  """Trains the points not done, `parallel` at a time, each in its own process (submitit's
  LocalExecutor); slot i gets GPUs [i * gpus_per_point, (i + 1) * gpus_per_point)."""
  import submitit
  todo = [p for p in points if not _is_done(sweep_workdir, p)]
  folder = os.path.join(sweep_workdir, "local")
  executor = submitit.LocalExecutor(folder=folder)
  # The job processes import cnn_jax from this checkout whatever their working directory.
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
  entry = _submission_entry("local", {"parallel": parallel, "gpus_per_point": gpus_per_point})
  running: dict[int, tuple[Point, Any]] = {}  # slot -> (point, job)
  queue = list(todo)
  submitted = []
  while queue or running:
    for slot in [s for s in range(parallel) if s not in running]:
      if not queue:
        break
      point = queue.pop(0)
      gpus = list(range(slot * gpus_per_point, (slot + 1) * gpus_per_point))
      executor.update_parameters(timeout_min=60 * 24 * 365, gpus_per_node=gpus_per_point,
                                 visible_gpus=gpus)
      job = executor.submit(_point_job(point, sweep_workdir))
      running[slot] = (point, job)
      submitted.append((point, job))
      print(f"[sweep] {point.name}: started (log {job.paths.stdout})".replace("%t", "0"),
            flush=True)
    for slot, (point, job) in list(running.items()):
      if job.done():
        del running[slot]
        try:
          status = job.result()
        except Exception as e:  # The job's own traceback is in its log.
          status = f"failed: {cli.one_line(e).splitlines()[0][:300]}"
        print(f"[sweep] {point.name}: {status}", flush=True)
    time.sleep(0.5)
  if submitted:
    entry["points"] = {p.name: str(j.job_id) for p, j in submitted}
    _record_submission(sweep_workdir, entry)
    _write_point_records(sweep_workdir, submitted, entry)


def status_rows(points: Sequence[Point], sweep_workdir: str) -> list[dict[str, Any]]:
  """Each point's state from its workdir and, for submitted jobs, from squeue."""
  latest = point_jobs(sweep_workdir)
  states = launch.queue_states(list(latest.values()))
  rows = []
  for point in points:
    workdir = os.path.join(sweep_workdir, point.name)
    job = latest.get(point.name)
    curves = read_curves(workdir)
    record = _read_json(os.path.join(workdir, POINT_RECORD))
    queued = states.get(job or "") or ("PENDING" if job and launch.is_active(job, states)
                                      else None)
    if _is_done(sweep_workdir, point):
      state = "done"
    elif queued in ("RUNNING", "COMPLETING"):
      state = "running"
    elif queued in launch.ACTIVE_STATES:
      state = "pending"
    elif record.get("error"):
      state = "failed"
    elif curves:
      state = "stopped"
    elif job:
      state = "failed"  # submitted, gone from the queue, never trained: see its log
    else:
      state = "not run"
    step = max((s for c in curves.values() for s, _ in c), default=None)
    metric = next((m for m in ("eval/accuracy", "eval/loss", "train/loss") if m in curves),
                  None)
    rows.append({"point": point.name, "state": state, "job": job or "-", "step": step,
                 "metric": f"{metric}={curves[metric][-1][1]:.4f}" if metric else "-"})
  return rows


def print_status(rows: Sequence[dict[str, Any]]) -> None:
  columns = ("point", "state", "job", "step", "metric")
  widths = {c: max(len(c), *(len(str(r[c] if r[c] is not None else "-")) for r in rows))
            for c in columns}
  print("  ".join(c.ljust(widths[c]) for c in columns))
  for row in rows:
    print("  ".join(str(row[c] if row[c] is not None else "-").ljust(widths[c])
                    for c in columns))
  counts = {}
  for row in rows:
    counts[row["state"]] = counts.get(row["state"], 0) + 1
  print(", ".join(f"{n} {state}" for state, n in counts.items()), flush=True)


def run_sweep(sweep: ml_collections.ConfigDict, sweep_workdir: str, *,
              print_commands: bool = False, collect_only: bool = False, launcher: str = "local",
              parallel: int = 1, gpus_per_point: int = 0,
              slurm: ml_collections.ConfigDict | None = None) -> list[dict[str, Any]]:
  """Validates, then trains (or prints the commands of, or submits) every point; writes tables
  and plots once the points ran here.

  Returns the table rows (empty with print_commands or a SLURM submission)."""
  points = build_points(sweep)
  if launcher == "slurm" and not (print_commands or collect_only):
    launch.check_sbatch()  # Before anything is written.
  try:
    os.makedirs(sweep_workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create sweep workdir {sweep_workdir!r}: {e.strerror or e}") from None
  if print_commands:
    commands = [point_command(sweep, p, sweep_workdir) for p in points]
    with open(os.path.join(sweep_workdir, "commands.sh"), "w") as f:
      f.write("#!/bin/sh\n# " + sweep.name + ": one independent job per line\n")
      f.write("\n".join(commands) + "\n")
    print("\n".join(commands), flush=True)
    return []
  if launcher == "slurm" and not collect_only:
    submit_slurm(sweep, points, sweep_workdir, slurm or launch.slurm_config())
    return []
  if not collect_only and parallel > 1:
    run_local_parallel(points, sweep_workdir, parallel, gpus_per_point)
  elif not collect_only:
    for i, point in enumerate(points):
      print(f"[sweep {i + 1}/{len(points)}] {point.name}", flush=True)
      status = run_point(point, os.path.join(sweep_workdir, point.name))
      print(f"[sweep {i + 1}/{len(points)}] {point.name}: {status}", flush=True)
  rows = collect(points, sweep_workdir, sweep.summarize)
  md_path, csv_path = write_tables(rows, sweep_workdir, sweep.name)
  png_path = plot_curves(points, sweep_workdir, list(sweep.plot_metrics), sweep.name)
  print(open(md_path).read(), flush=True)
  print(f"wrote {md_path}, {csv_path}" + (f", {png_path}" if png_path else ""), flush=True)
  return rows


_SWEEP_FIELDS = ("name", "base_config", "base_config_arg", "workdir", "overrides", "points",
                 "grid", "plot_metrics", "summarize")


def main(argv: list[str]) -> None:
  cli.no_extra_args(argv)
  if FLAGS["config"].present:
    from ml_collections import config_flags
    config_path = config_flags.get_config_filename(FLAGS["config"]).split(":", 1)[0]
    if not os.path.isfile(config_path):
      raise UserError(f"sweep config file not found: {config_path}")
  sweep = cli.config_value("config", "configs/sweeps/degradation_digits.py")
  missing = [f for f in _SWEEP_FIELDS if f not in sweep]
  if missing:
    raise UserError(f"the sweep config lacks the fields {', '.join(missing)} "
                    "(see cnn_jax/sweep.py)")
  modes = [f for f in ("print_commands", "collect_only", "status") if FLAGS[f].value]
  if len(modes) > 1:
    raise UserError(f"--{' and --'.join(modes)} exclude each other")
  if FLAGS.parallel < 1 or FLAGS.gpus_per_point < 0:
    raise UserError("--parallel must be >= 1 and --gpus_per_point >= 0")
  if FLAGS.launcher == "slurm" and FLAGS.parallel > 1:
    raise UserError("--parallel is for --launcher local; on SLURM use --slurm.max_parallel")
  workdir = FLAGS.workdir or sweep.workdir
  if FLAGS.status:
    print_status(status_rows(build_points(sweep), workdir))
    return
  run_sweep(sweep, workdir, print_commands=FLAGS.print_commands,
            collect_only=FLAGS.collect_only, launcher=FLAGS.launcher, parallel=FLAGS.parallel,
            gpus_per_point=FLAGS.gpus_per_point, slurm=FLAGS.slurm)


def run() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
