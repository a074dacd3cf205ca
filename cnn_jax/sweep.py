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
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cnn_jax.errors import UserError

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Only when run as a program: cnn_jax.main defines --config and --workdir too, and a process
  that imports both must not see them defined twice."""
  config_flags.DEFINE_config_file(
      "config", None, "Path to a sweep config (configs/sweeps/*.py).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Sweep workdir (default: the config's workdir).")
  flags.DEFINE_bool(
      "print_commands", False, "Write one `python -m cnn_jax.main ...` command per point to "
      "WORKDIR/commands.sh and stdout instead of training.")
  flags.DEFINE_bool(
      "collect_only", False, "Train nothing: build the table and plots from the points' "
      "workdirs.")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL_METRICS = "final_metrics.json"
POINT_RECORD = "sweep_point.json"  # overrides, accumulated wall time, failure reason


@dataclasses.dataclass
class Point:
  name: str
  overrides: dict[str, Any]       # the point's own overrides (what varies across points)
  config: ml_collections.ConfigDict  # base config with the shared and point overrides applied
  base_config_arg: str = ""        # the argument of the base config's get_config


BASE_CONFIG_ARG = "base_config_arg"  # a point key that is no config field: the base config's arg


# ----------------------------------------------------------------------------- configs

def fail(message: str) -> None:
  """One line on stderr, exit code 2 (cnn_jax.main's contract; importing main would define its
  flags a second time)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _one_line(e: BaseException) -> str:
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(_one_line(e))
  except KeyError as e:
    fail(f"unknown field in a --config override of the sweep config: {_one_line(e)}")
  except (AttributeError, ValueError, TypeError, OSError, SyntaxError) as e:
    fail(f"bad --config: {_one_line(e)}")
  raise AssertionError("unreachable")


def resolve_path(path: str) -> str:
  """A config path as given if it exists, else relative to the repository root."""
  if os.path.isfile(path) or os.path.isabs(path):
    return path
  return os.path.join(REPO_ROOT, path)


def load_module(full_path: str) -> Any:
  """The Python file at `full_path` as a fresh module (a config file, or a sweep config that
  builds on a sibling sweep's points)."""
  spec = importlib.util.spec_from_file_location(f"sweep_file_{abs(hash(full_path))}", full_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str, arg: str = "") -> ml_collections.ConfigDict:
  """get_config(arg) (or get_config() when arg is "") of a config file, locked."""
  full_path = resolve_path(path)
  if not os.path.isfile(full_path):
    raise UserError(f"base config not found: {path}")
  try:
    module = load_module(full_path)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # A broken base config is the user's to fix: say why in one line.
    raise UserError(f"cannot load base config {path}: {_one_line(e)}") from None
  config.lock()
  return config


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
                    f"(the field holds {type(current).__name__}): {_one_line(e)}") from None


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


def build_points(sweep: ml_collections.ConfigDict) -> list[Point]:
  """Validates the whole sweep against the base config before anything runs."""
  bases = {sweep.base_config_arg: load_config_file(sweep.base_config, sweep.base_config_arg)}
  shared = _pairs(sweep.overrides, "overrides")
  grid = _pairs(sweep.grid, "grid")
  raw_points = list(sweep.points)
  for p in raw_points:
    if not isinstance(p, dict):
      raise UserError(f"sweep points must be dicts of dotted key -> value, got {p!r}")
  from cnn_jax.models import registry  # Imports JAX: only once the flags are parsed.

  points, names = [], set()
  for overrides in expand_grid(raw_points, grid):
    arg = str(overrides.get(BASE_CONFIG_ARG, sweep.base_config_arg))
    if arg not in bases:
      bases[arg] = load_config_file(sweep.base_config, arg)
    config = bases[arg].copy_and_resolve_references()
    config.lock()
    for key, value in [*shared, *overrides.items()]:
      if key != BASE_CONFIG_ARG:
        set_override(config, key, value)
    registry.get_constructor(config.model.name)  # UserError with close matches
    name = point_name(overrides)
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


def _read_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_json(path: str, payload: dict[str, Any]) -> None:
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)


def run_point(point: Point, workdir: str) -> str:
  """Trains one point unless it finished: 'skipped', 'finished' or 'failed: ...'."""
  if os.path.exists(os.path.join(workdir, FINAL_METRICS)):
    return "skipped"
  from cnn_jax import train

  os.makedirs(workdir, exist_ok=True)
  record_path = os.path.join(workdir, POINT_RECORD)
  record = _read_json(record_path)
  record.update(overrides=point.overrides, error=None)
  start = time.perf_counter()
  status = "finished"
  try:
    if point.config.task == "fcmae":  # as cnn_jax.main: pre-training also exports the encoder
      from cnn_jax import fcmae
      fcmae.pretrain(point.config, workdir)
    else:
      train.train_and_evaluate(point.config, workdir)
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

def run_sweep(sweep: ml_collections.ConfigDict, sweep_workdir: str, *,
              print_commands: bool = False, collect_only: bool = False) -> list[dict[str, Any]]:
  """Validates, then trains (or prints the commands of) every point; writes tables and plots.

  Returns the table rows (empty with print_commands)."""
  points = build_points(sweep)
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
  if not collect_only:
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
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["config"].present:
    fail("--config is required, e.g. --config configs/sweeps/degradation_digits.py")
  config_path = config_flags.get_config_filename(FLAGS["config"])
  if not os.path.isfile(config_path.split(":", 1)[0]):
    fail(f"sweep config file not found: {config_path.split(':', 1)[0]}")
  try:
    sweep = FLAGS.config
  except OSError as e:
    fail(f"bad --config: {_one_line(e.__cause__ or e)}")
  missing = [f for f in _SWEEP_FIELDS if f not in sweep]
  if missing:
    fail(f"the sweep config lacks the fields {', '.join(missing)} (see cnn_jax/sweep.py)")
  if FLAGS.print_commands and FLAGS.collect_only:
    fail("--print_commands and --collect_only exclude each other")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    run_sweep(sweep, FLAGS.workdir or sweep.workdir, print_commands=FLAGS.print_commands,
              collect_only=FLAGS.collect_only)
  except UserError as e:
    fail(str(e))


def run() -> None:
  _define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
