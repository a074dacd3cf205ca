"""experiments/activations/report.py: the smoothed training error, "epochs to target", the table
on a synthetic sweep workdir; and the activations sweep configs validate."""

from __future__ import annotations

import csv
import json
import os

import pytest

from cnn_jax import cli, sweep
from helpers import REPO_ROOT


report = cli.load_module(os.path.join(REPO_ROOT, "experiments", "activations", "report.py"))


def test_smoothed_error_is_the_step_weighted_mean_over_one_window():
  # Logged every 2 steps: accuracy 0.0 for steps 1-2, 0.5 for 3-4, 1.0 for 5-6.
  curve = [(2, 0.0), (4, 0.5), (6, 1.0)]
  smooth = dict(report.smoothed_error(curve, window=4))
  assert 2 not in smooth  # no full window behind step 2
  assert smooth[4] == pytest.approx((2 * 1.0 + 2 * 0.5) / 4)
  assert smooth[6] == pytest.approx((2 * 0.5 + 2 * 0.0) / 4)
  # A window of 3 cuts the span of steps 3-4 in half: steps 4, 5, 6.
  assert dict(report.smoothed_error(curve, window=3))[6] == pytest.approx((0.5 + 0 + 0) / 3)


def test_epochs_to_target_finds_the_first_epoch_and_none_when_never_reached():
  steps_per_epoch = 10
  # Error 1 - accuracy: 0.9 for the first 10 steps, then 0.3, then 0.05 from step 21 on.
  curve = [(s, 0.1 if s <= 10 else 0.7 if s <= 20 else 0.95) for s in range(1, 41)]
  assert report.epochs_to_target(curve, steps_per_epoch, 0.3) == pytest.approx(2.0)
  # The 10-step window ending at step 27 holds 3 steps of 0.3 and 7 of 0.05 (0.125), the one
  # ending at step 28 holds 2 and 8 (0.1): 0.11 is first reached at step 28.
  assert report.epochs_to_target(curve, steps_per_epoch, 0.11) == pytest.approx(2.8)
  assert report.epochs_to_target(curve, steps_per_epoch, 0.01) is None


def _write_run(workdir, accuracies, test_accuracy=None):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step, accuracy in enumerate(accuracies, 1):
      f.write(json.dumps({"step": step, "train/accuracy": accuracy, "train/loss": 1.0}) + "\n")
  if test_accuracy is not None:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump({"step": len(accuracies), "accuracy": test_accuracy}, f)


def test_table_on_a_synthetic_sweep(tmp_path):
  config = sweep.load_config_file("configs/sweeps/activations_digits.py")
  points = sweep.build_points(config)
  by_name = {p.name: p for p in points}
  relu = "model.name-plain20_model.activation-relu"
  sigmoid = "model.name-plain20_model.activation-sigmoid"
  _write_run(str(tmp_path / relu), [0.5] * 5 + [0.95] * 15, test_accuracy=0.97)
  _write_run(str(tmp_path / sigmoid), [0.5] * 20, test_accuracy=0.5)
  rows = report.collect_rows(points, str(tmp_path), [0.25, 0.1], steps_per_epoch=5)
  rows_by_point = {r["point"]: r for r in rows}
  assert rows_by_point[relu]["epochs_to_0.1"] == pytest.approx(2.0)  # steps 6-10 at 0.05
  assert rows_by_point[relu]["test_error"] == pytest.approx(0.03)
  assert rows_by_point[relu]["train_error"] == pytest.approx(0.05)
  assert rows_by_point[sigmoid]["epochs_to_0.25"] is None
  assert rows_by_point[sigmoid]["status"] == "finished"
  assert sum(r["status"] == "not run" for r in rows) == len(points) - 2
  text = report.write_table(rows, [0.25, 0.1], str(tmp_path), "t", 5, {})
  sigmoid_line = next(line for line in text.splitlines() if "| plain20 | sigmoid |" in line)
  assert "not reached" in sigmoid_line and "| 50.00 |" in sigmoid_line
  with open(tmp_path / "results.csv") as f:
    assert len(list(csv.DictReader(f))) == len(points)
  assert by_name[relu].overrides == {"model.name": "plain20", "model.activation": "relu"}


@pytest.mark.parametrize("name, base", [("activations_digits", "configs/resnet_cifar_digits.py"),
                                        ("activations_cifar10", "configs/resnet_cifar10.py")])
def test_activation_sweeps_validate_and_cross_every_activation_with_every_model(name, base):
  config = sweep.load_config_file(f"configs/sweeps/{name}.py")
  assert config.base_config == base
  points = sweep.build_points(config)
  combos = {(p.config.model.name, p.config.model.activation) for p in points}
  assert combos == {(m, a) for m in ("plain20", "resnet20", "plain56", "resnet56")
                    for a in ("sigmoid", "tanh", "relu", "gelu")}
  # Training accuracy logged often enough to place a target within a twentieth of an epoch.
  assert all(p.config.log_every_steps <= 20 for p in points)


def test_seed_argument_repeats_the_grid_in_its_own_workdir():
  default = sweep.load_config_file("configs/sweeps/activations_digits.py")
  repeat = sweep.load_config_file("configs/sweeps/activations_digits.py", "1")
  assert repeat.workdir == default.workdir + "_seed1"
  points = sweep.build_points(repeat)
  assert len(points) == 16 and all(p.config.seed == 1 for p in points)
  assert {p.config.seed for p in sweep.build_points(default)} == {0}


def test_print_commands_passes_the_activation_to_main(tmp_path):
  config = sweep.load_config_file("configs/sweeps/activations_digits.py")
  sweep.run_sweep(config, str(tmp_path / "w"), print_commands=True)
  commands = open(tmp_path / "w" / "commands.sh").read()
  assert commands.count("python -m cnn_jax.main") == 16
  assert "--config.model.name=resnet56 --config.model.activation=sigmoid" in commands


def test_lenet_sweep_has_no_batchnorm_and_every_activation_at_every_learning_rate():
  points = sweep.build_points(sweep.load_config_file("configs/sweeps/activations_lenet_digits.py"))
  combos = {(p.config.optimizer.learning_rate, p.config.model.activation) for p in points}
  assert len(combos) == len(points) == 12
  assert all(p.config.optimizer.name == "sgd" and p.config.model.name == "lenet5" for p in points)
  row = report.describe_point(points[0])
  assert row["setting"] == "lenet5 learning_rate=0.01" and row["kind"] == "plain"
