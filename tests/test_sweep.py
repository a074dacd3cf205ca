"""cnn_jax.sweep: grid expansion, validation before anything runs, skip/resume, outputs, CLI."""

from __future__ import annotations

import csv
import json
import os

import pytest

from cnn_jax import sweep
from cnn_jax.errors import UserError
from helpers import REPO_ROOT, TINY_SWEEP_OVERRIDES, make_sweep, run_cli, write_sweep_file

def test_grid_is_the_cartesian_product_crossed_with_the_points():
  points = sweep.expand_grid([{"seed": 0}, {"seed": 1}],
                             [("model.name", ("a", "b", "c")), ("num_epochs", (1, 2))])
  assert len(points) == 2 * 3 * 2
  assert points[0] == {"seed": 0, "model.name": "a", "num_epochs": 1}
  assert points[-1] == {"seed": 1, "model.name": "c", "num_epochs": 2}
  assert len({json.dumps(p, sort_keys=True) for p in points}) == 12
  assert sweep.expand_grid([{"seed": 3}], []) == [{"seed": 3}]


def test_build_points_applies_shared_and_point_overrides_and_names_dirs():
  points = sweep.build_points(make_sweep(grid=[("optimizer.learning_rate", (0.003, 0.01)),
                                               ("seed", (0, 1))]))
  assert [p.name for p in points] == [
      "optimizer.learning_rate-0.003_seed-0", "optimizer.learning_rate-0.003_seed-1",
      "optimizer.learning_rate-0.01_seed-0", "optimizer.learning_rate-0.01_seed-1"]
  assert points[3].config.optimizer.learning_rate == 0.01 and points[3].config.seed == 1
  assert points[0].config.total_steps == 4  # shared override
  assert points[0].config.model.name == "lenet5"  # untouched base field


def test_a_sweep_varies_a_model_option_its_base_config_does_not_list():
  # The base config (LeNet-5) lists neither option; each is checked against the point's model,
  # after the point's model.name.
  points = sweep.build_points(make_sweep(
      points=[{"model.pool": "avg"}, {"model.name": "resnet20", "model.drop_path_rate": 0.1}],
      grid=[("seed", (0, 1))]))
  assert [p.config.model.get("pool") for p in points] == ["avg", "avg", None, None]
  assert [p.config.model.get("drop_path_rate") for p in points] == [None, None, 0.1, 0.1]
  assert "--config.model.pool=avg" in sweep.point_command(make_sweep(), points[0], "w")
  with pytest.raises(UserError, match="model 'lenet5' takes no option 'drop_path_rate'"):
    sweep.build_points(make_sweep(grid=[("model.drop_path_rate", (0.1,))]))


def test_a_point_can_pick_the_base_config_argument(tmp_path):
  # configs/zoo_digits.py:NAME gives each model its own options (ViT: image_size), which a
  # model.name override alone could not.
  fields = dict(base_config="configs/zoo_digits.py", base_config_arg="lenet5", overrides=[],
                points=[{}, {"base_config_arg": "vit_tiny_patch4_32", "data.max_shift": 0}],
                grid=[("seed", (0, 1))])
  points = sweep.build_points(make_sweep(**fields))
  assert [p.config.model.name for p in points] == ["lenet5"] * 2 + ["vit_tiny_patch4_32"] * 2
  assert points[2].config.model.image_size == 32 and points[2].config.data.max_shift == 0
  assert points[0].config.data.max_shift == 2
  assert points[2].name == "base_config_arg-vit_tiny_patch4_32_data.max_shift-0_seed-0"
  command = sweep.point_command(make_sweep(**fields), points[2], "w")
  assert command.startswith("python -m cnn_jax.main --config=configs/zoo_digits.py:"
                            "vit_tiny_patch4_32 --workdir=w/base_config_arg-")
  assert "--config.data.max_shift=0 --config.seed=0" in command
  assert "base_config_arg=" not in command
  assert "--config=configs/zoo_digits.py:lenet5 " in sweep.point_command(
      make_sweep(**fields), points[0], "w")


@pytest.mark.parametrize("fields, message", [
    (dict(grid=[("optimizer.learning_rte", (0.1,))]), "unknown config field"),
    (dict(grid=[("optimiser.learning_rate", (0.1,))]), "optimiser does not exist"),
    (dict(overrides=[("num_epochz", 1)]), "unknown config field"),
    (dict(points=[{"data.batch_size": "big"}], grid=[]), "bad value 'big'"),
    (dict(grid=[("model.name", ("lenet5", "lenet6"))]), "unknown model 'lenet6'"),
    (dict(grid=[("seed", ())]), "non-empty list"),
    (dict(grid=[("optimizer.learning_rate", (0.01, -0.01))]),
     r"^sweep point optimizer.learning_rate--0.01: optimizer.learning_rate=-0.01 must be at least 0$"),
    (dict(grid=[], points=[]), "the sweep is empty"),
    (dict(base_config="configs/nope.py"), "base config not found"),
])
def test_bad_sweeps_fail_before_anything_runs(tmp_path, fields, message):
  with pytest.raises(UserError, match=message):
    sweep.run_sweep(make_sweep(**fields), str(tmp_path / "sweep"))
  assert not os.path.exists(tmp_path / "sweep")  # not even the workdir was created


def test_a_fcmae_point_runs_the_pretraining_task(tmp_path, monkeypatch):
  # The sweep must run a point the way cnn_jax.main would: an FCMAE config pre-trains (and
  # exports its encoder), it does not train the encoder as a classifier.
  from cnn_jax import fcmae, train

  calls = []
  monkeypatch.setattr(fcmae, "pretrain", lambda config, workdir: calls.append("fcmae"))
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config, workdir, **kw: calls.append("classification"))
  points = sweep.build_points(make_sweep(
      base_config="configs/fcmae_convnextv2_digits.py", overrides=[], grid=[],
      points=[{"fcmae.mask_ratio": 0.4}]))
  points += sweep.build_points(make_sweep(grid=[("seed", (1,))]))
  for i, point in enumerate(points):
    sweep.run_point(point, str(tmp_path / str(i)))
  assert calls == ["fcmae", "classification"]


def test_sweep_trains_skips_finished_resumes_interrupted_and_writes_outputs(tmp_path):
  workdir = str(tmp_path / "sweep")
  config = make_sweep()
  # First pass: halt every point after 2 of its 4 steps (an interrupted sweep).
  config.overrides = [*TINY_SWEEP_OVERRIDES, ("halt_after_steps", 2)]
  rows = sweep.run_sweep(config, workdir)
  assert [r["status"] for r in rows] == ["partial", "partial"]
  names = [r["point"] for r in rows]
  for name in names:
    assert not os.path.exists(os.path.join(workdir, name, "final_metrics.json"))

  # Second pass: both resume from step 2 (their checkpoints) and finish.
  config.overrides = list(TINY_SWEEP_OVERRIDES)
  rows = sweep.run_sweep(config, workdir)
  assert [r["status"] for r in rows] == ["finished", "finished"]
  for name in names:
    steps = [json.loads(line)["step"]
             for line in open(os.path.join(workdir, name, "metrics.jsonl"))]
    assert sorted(set(steps)) == [1, 2, 3, 4]  # steps 1-2 from pass one, 3-4 resumed
    assert steps.count(1) == 1  # nothing was retrained from scratch
  finished_mtime = os.path.getmtime(os.path.join(workdir, names[0], "final_metrics.json"))

  # Third pass: everything finished, so nothing trains and the outputs are rebuilt.
  rows = sweep.run_sweep(config, workdir)
  assert os.path.getmtime(os.path.join(workdir, names[0], "final_metrics.json")) == finished_mtime
  assert all(r["params"] == 61_706 for r in rows)  # LeNet-5, via cnn_jax.summary
  assert all(0.0 <= r["test_error"] <= 1.0 and r["wall_s"] > 0 for r in rows)

  table = open(os.path.join(workdir, "results.md")).read()
  assert "optimizer.learning_rate-0.003" in table and "test error %" in table
  with open(os.path.join(workdir, "results.csv")) as f:
    csv_rows = list(csv.DictReader(f))
  assert [r["point"] for r in csv_rows] == names
  assert float(csv_rows[1]["optimizer.learning_rate"]) == 0.01
  png = os.path.join(workdir, "curves.png")
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def _write_sweep_file(tmp_path, grid: list) -> str:
  return write_sweep_file(tmp_path, workdir=str(tmp_path / "default_workdir"),
                          overrides=[("num_epochs", 1), ("data.max_shift", 1)],
                          points=[{"model.name": "lenet5"}], grid=grid)


def test_print_commands_writes_one_main_command_per_point(tmp_path):
  path = _write_sweep_file(tmp_path, [("optimizer.learning_rate", (0.001, 0.01))])
  workdir = str(tmp_path / "w")
  result = run_cli("cnn_jax.sweep", f"--config={path}", f"--workdir={workdir}",
                   "--print_commands")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2
  assert lines == open(os.path.join(workdir, "commands.sh")).read().strip().splitlines()[2:]
  first = lines[0]
  assert first.startswith("python -m cnn_jax.main --config=configs/lenet5_digits.py ")
  assert f"--workdir={workdir}/model.name-lenet5_optimizer.learning_rate-0.001" in first
  assert "--config.num_epochs=1 --config.data.max_shift=1" in first
  assert "--config.model.name=lenet5 --config.optimizer.learning_rate=0.001" in first
  assert not os.path.exists(os.path.join(workdir, lines[0].split("/")[-1]))  # nothing trained


def test_printed_tuple_values_are_quoted_for_the_shell(tmp_path):
  path = _write_sweep_file(tmp_path, [("data.mean", ((0.5, 0.5, 0.5),))])
  result = run_cli("cnn_jax.sweep", f"--config={path}", "--print_commands")
  assert result.returncode == 0, result.stderr
  assert "'--config.data.mean=(0.5, 0.5, 0.5)'" in result.stdout


def test_cli_bad_override_is_one_line_and_exit_2(tmp_path):
  path = _write_sweep_file(tmp_path, [("optimizer.lr", (0.1,))])
  result = run_cli("cnn_jax.sweep", f"--config={path}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0
  assert result.stderr.startswith("error: unknown config field in sweep override 'optimizer.lr'")
  assert not os.path.exists(tmp_path / "w")


def test_repository_sweep_configs_validate():
  sweeps_dir = os.path.join(REPO_ROOT, "configs", "sweeps")
  for name in sorted(os.listdir(sweeps_dir)):
    if name.endswith(".py"):
      config = sweep.load_config_file(os.path.join(sweeps_dir, name))
      assert sweep.build_points(config), name


@pytest.mark.parametrize("args, message", [
    ((), "error: --config is required"),
    (("--config=configs/sweeps/nope.py",), "error: sweep config file not found"),
])
def test_cli_missing_config_is_one_line_and_exit_2(args, message):
  result = run_cli("cnn_jax.sweep", *args)
  assert result.returncode == 2
  assert result.stderr.startswith(message) and result.stderr.strip().count("\n") == 0
